# Names moose accepts with hyphens: a pipeline `page-views` (table, stream, ingest API, DLQ) and a transform into
# `page-views-doubled`.
from millrace import IngestPipeline, IngestPipelineConfig, Key, Stream, TransformConfig
from pydantic import BaseModel


class View(BaseModel):
    id: Key[str]
    value: int


views = IngestPipeline[View]("page-views", IngestPipelineConfig())
doubled = Stream[View]("page-views-doubled")
views.get_stream().add_transform(doubled, lambda v: View(id=v.id, value=v.value * 2))


# A second transform between the same two streams runs too, with a version of its own.
def triple(v: View) -> View:
    return View(id=f"{v.id}-t", value=v.value * 3)


views.get_stream().add_transform(doubled, triple, TransformConfig(version="triple"))
