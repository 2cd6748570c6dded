"""fwcluster-syncd: conntrack state sync between cluster members."""
