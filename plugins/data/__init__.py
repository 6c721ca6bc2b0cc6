"""Built-in data plugins: corpora (``stdlib``, ``text:PATH``, ``tokens:PATH``) and synthetic tasks.

Each is registered as a factory ``factory(arg=None, **options) -> DataSource``;
``arg`` is the text after ``:`` in a name such as ``text:PATH``.
"""

from nlframe import hookimpl

from .continual import Continual
from .formal import CycleNavigation, Dyck, ModularArithmetic, Parity
from .mqar import MQAR
from .niah import NIAH
from .stdlib import stdlib
from .text import text
from .tokenized import tokens


@hookimpl
def nlframe_register_data(register):
    """Register the built-in data plugins."""
    register("stdlib", stdlib, description="Python standard-library source as bytes (vocab 256)")
    register("text", text, description="text:PATH — a file or directory as bytes (vocab 256)")
    register("tokens", tokens, description="tokens:PATH — a file or directory as BPE token ids "
             "(--option tokenizer=DIR; vocab from the tokenizer)")
    register("mqar", MQAR)
    register("niah", NIAH)
    register("parity", Parity)
    register("cycle-navigation", CycleNavigation)
    register("modular-arithmetic", ModularArithmetic)
    register("dyck", Dyck)
    register("continual", Continual)
