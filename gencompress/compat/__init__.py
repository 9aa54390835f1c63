"""The fence: every use of another library's private API, and every patch of one, lives here.

TensorFlow's converter internals, LiteRT's op listing, tfmot's quantizer and registry internals
and tf-keras' legacy loaders are not public: a minor release can rename or stop calling them.
Keeping them in this package means one place to look when a dependency moves, and the patches
check that the patched function was really called (``PatchNotCalled`` otherwise), so a
dependency that stops calling it breaks loudly in the tests instead of silently changing results.
"""


class PatchNotCalled(RuntimeError):
    """A patch of another library's function was in place, but the library never called it."""
