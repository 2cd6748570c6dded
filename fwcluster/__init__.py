"""fwcluster: a stateful firewall cluster appliance."""
__version__ = "0.1.0"
