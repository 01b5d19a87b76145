"""instruct-museformer: score -> expressive performance with Museformer's bar-structured attention.

The package reads as the pipeline, each layer importing only from the ones before it:
tokens -> data -> model -> train -> render -> evaluate; ``cli`` is a thin shell over them.
"""

__version__ = "0.1.0"
