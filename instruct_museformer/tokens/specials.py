"""The token ids every part of the pipeline agrees on (MidiTok REMI numbering).

MidiTok puts its special tokens first and REMI's ``Bar_None`` right after them, so these ids hold for
every tokenizer configuration this project builds. ``BAR`` *closes* a bar in our sequences (it is
Museformer's ``b-1``): the tokenizer rotates REMI's leading Bar token to the end of each bar.
"""

PAD = 0
BOS = 1
EOS = 2
MASK = 3
BAR = 4

NUM_SPECIALS = 4
