# A moose_lib app that also declares a query API, which Millrace does not provide: loading it fails with one
# clear error naming Api, not a bare ImportError.
from pydantic import BaseModel

from millrace import Key, Stream
from millrace.dmv2 import Api, ApiConfig


class Order(BaseModel):
    id: Key[str]
    amount: int


orders = Stream[Order]("orders")
totals = Api[Order, Order]("totals", query_function=lambda params, client: [], config=ApiConfig())
