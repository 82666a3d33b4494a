"""`python -m arbiter.simulator.container ARGS`: what the simulated docker daemon runs."""

from arbiter.simulator.container.lifecycle import exit_now, main

exit_now(main())
