"""The fleet simulator: the engine's scheduler, the router and the autoscaling policy run
unchanged over N simulated replicas in virtual time, with the forward replaced by a
step-time model (see SIMULATOR.md)."""
