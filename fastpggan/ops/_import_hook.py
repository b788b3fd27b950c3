"""A post-import hook: `AfterImport(name, then)` on sys.meta_path runs `then()` right after the module `name` is
first imported. ops._dispatch uses it to hook torch.compile's start as soon as torch._dynamo is imported."""


class AfterImport:
    """A sys.meta_path finder that runs `then()` right after the module `name` is first imported (a post-import
    hook): torch.compile imports torch._dynamo, and the hook must be in place before its first trace, so that an
    op or layer compiled on its very first call finds its device prepared."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        import importlib.util
        import sys

        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            loader, then = spec.loader, self.then

            class Loader:
                def create_module(self, spec):
                    return loader.create_module(spec)

                def exec_module(self, module):
                    loader.exec_module(module)
                    then()

            spec.loader = Loader()  # type: ignore[assignment]  # a loader by duck typing
        return spec
