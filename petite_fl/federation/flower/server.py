"""The ServerApp's main: resolve the run-config once, journal the run, run it over Flower."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from petite_fl.credentials import check_run_config
from petite_fl.errors import PetiteError
from petite_fl.federation.flower import journal
from petite_fl.federation.flower.transport import FlowerTransport
from petite_fl.federation.server.arms import run_all
from petite_fl.runconfig import compose_run


def serve(grid: Grid, context: Context) -> dict[str, Any]:
    """One federated run (or a comparison's arms), journaled so that `petite-server --resume`
    can resubmit a killed run. A run-config holding a credential is refused before anything: not
    journaled, and no site has had a message of the run, so no ClientApp was given its run-config."""
    check_run_config(context.run_config)
    journal.record_start(context.run_id, dict(context.run_config))
    try:
        run_config = dict(context.run_config)
        result = run_all(compose_run(run_config), run_config, FlowerTransport(grid))
    except PetiteError as exc:  # the run's own verdict (config, too few sites): resubmitting would not help
        journal.record_end(context.run_id, "failed", str(exc)[:500])
        raise
    except BaseException as exc:  # lost its SuperLink, killed, a bug: interrupted, --resume tries again
        journal.record_end(context.run_id, "running", f"interrupted: {exc!r}"[:500])
        raise
    journal.record_end(context.run_id, "finished")
    return result
