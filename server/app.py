"""Flower ServerApp: wiring over `petite_fl.federation` (see that package for the logic)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from petite_fl.federation.apps import serve

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, context)
