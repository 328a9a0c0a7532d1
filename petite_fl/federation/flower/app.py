"""The Flower ServerApp and ClientApp objects, importable from the installed package.

`flwr run` finds them through `[tool.flwr.app.components]`; the repository's `server/` and
`client/` folders only re-export them for `flwr run .` from a checkout.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from petite_fl.federation.flower.client import error_reply, handle
from petite_fl.federation.flower.secagg import TRAIN_MODS
from petite_fl.federation.flower.server import serve
from petite_fl.federation.site.endpoint import SiteEndpoint


class SiteClientApp(ClientApp):
    """Flower's ClientApp with one boundary: an exception anywhere in it (a mod, an unknown route, the
    handler) becomes a whitelisted error reply. Left to Flower, its error reply carries the exception's
    text (`<class 'KeyError'>:<'...'>`) to the coordinator, paths and names included."""

    def __call__(self, message: Message, context: Context) -> Message:
        try:
            return super().__call__(message, context)
        except Exception as exc:  # see the class docstring
            return error_reply(message, exc, SiteEndpoint(dict(context.node_config), {}).name())


server_app = ServerApp()
client_app = SiteClientApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, context)


@client_app.query("hello")
def hello(message: Message, context: Context) -> Message:
    return handle(message, context)


@client_app.query("backbone")
def backbone(message: Message, context: Context) -> Message:
    return handle(message, context)


@client_app.train(mods=TRAIN_MODS)  # Flower's SecAgg+ / DP-clipping mods, when a round asks for them
def train(message: Message, context: Context) -> Message:
    return handle(message, context)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return handle(message, context)
