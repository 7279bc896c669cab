//! Test support: packet builders, fixture runner, network-namespace labs.
