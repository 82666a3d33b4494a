"""Arbiter: control plane and GPU arbiter for a small cluster of GPU hosts."""
