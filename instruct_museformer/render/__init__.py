"""Rendering: exact KV-cached, grammar-constrained decoding that follows the score bar by bar.

* :mod:`.incremental` -- ``IncrementalDecoder``: per-layer regular / summary / cross K/V caches, one token
  per step, logits equal to the model's full forward (static layout + CUDA graph on GPU);
* :mod:`.grammar` -- ``TokenGrammar`` / ``GrammarState``: which REMI token may come next;
* :mod:`.decode` -- ``decode``: batched sampling (top-k / top-p / temperature) over the cache and grammar;
* :mod:`.windows` -- ``render_token_bars`` (bar-aligned windows for any length), ``score_match``;
* :mod:`.pipeline` -- checkpoint loading, score files -> MIDI / WAV / plot (what ``imf render`` runs).
"""
