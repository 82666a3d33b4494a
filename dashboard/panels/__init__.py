"""The dashboard's panels, each one fragment with three uses (page include, poll view,
socket push): `cluster` (hosts, services, broker clients), `swaps`, `history` (the plots),
`lock_banner`, `schedules`, `webhooks`, and `coordination` (the three coordination panels
together)."""
