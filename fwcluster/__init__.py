"""fwcluster: a stateful firewall cluster appliance."""


def __getattr__(name: str):
    # read on demand: in a source tree it runs git (fwcluster/version.py)
    if name == "__version__":
        from fwcluster import version
        return version.current()
    raise AttributeError(name)
