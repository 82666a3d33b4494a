"""The swap machine: `store` (rows and state moves), `dispatch` (claims swaps, runs them),
`machine` (`SwapRunner`, one swap from pre-flight to the end), `preflight`, `docker_argv`
(the docker command lines), `launch_phases` (pull, download), `memory` (waiting for freed
GPU memory), `journal` (the swap's log), `slot` (who holds a service's slot),
`multi_node` (one model over several hosts), `wakeup` (new swaps start at once)."""
