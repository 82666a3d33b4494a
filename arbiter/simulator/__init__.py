"""The simulated cluster: real SSH servers and real backend processes on loopback."""
