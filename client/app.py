"""Flower ClientApp: one scanner site, wiring over `petite_fl.federation.apps.handle`."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from petite_fl.federation.apps import handle
from petite_fl.federation.secagg import TRAIN_MODS

app = ClientApp()


@app.query("hello")
def hello(message: Message, context: Context) -> Message:
    return handle(message, context)


@app.query("backbone")
def backbone(message: Message, context: Context) -> Message:
    return handle(message, context)


@app.train(mods=TRAIN_MODS)  # Flower's SecAgg+ / DP-clipping mods, when a round asks for them
def train(message: Message, context: Context) -> Message:
    return handle(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return handle(message, context)
