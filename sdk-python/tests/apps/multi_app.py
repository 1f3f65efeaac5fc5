# A multi-transform (moose's `set_multi_transform` with `dest.routed(...)`): each order goes to the table of big or
# small orders; "skip" orders nowhere; "both" orders to both tables and two audit records; a dict routed to a
# stream is fitted to its model.
from millrace import IngestPipeline, IngestPipelineConfig, Key, Stream
from pydantic import BaseModel


class Order(BaseModel):
    id: Key[str]
    kind: str
    amount: int


class Audit(BaseModel):
    id: Key[str]
    note: str


orders = IngestPipeline[Order]("orders", IngestPipelineConfig(table=False))
big = IngestPipeline[Order]("big_orders", IngestPipelineConfig(ingest_api=False))
small = IngestPipeline[Order]("small_orders", IngestPipelineConfig(ingest_api=False))
audit = Stream[Audit]("order_audit")
# Not routed to: the routes read from `route`'s code leave it out.
unrelated = Stream[Audit]("unrelated")


def route(order: Order):
    if order.kind == "skip":
        return []
    if order.kind == "both":
        return [
            big.get_stream().routed(order),
            small.get_stream().routed([order]),
            audit.routed([Audit(id=order.id, note="first"), {"id": order.id, "note": "second"}]),
        ]
    if order.amount >= 100:
        return [big.get_stream().routed(order), audit.routed(None)]
    return [small.get_stream().routed(order), audit.routed(None)]


orders.get_stream().set_multi_transform(route)
