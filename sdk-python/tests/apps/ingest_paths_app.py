# Ingest APIs as moose_lib declares them beyond the reference page: a standalone IngestApi with
# IngestConfigWithDestination and a custom path, a pipeline with a custom path, and the deprecated `ingest=` flag.
from millrace import IngestApi, IngestConfigWithDestination, IngestPipeline, IngestPipelineConfig, Key, Stream
from pydantic import BaseModel


class Event(BaseModel):
    id: Key[str]
    value: int


events = Stream[Event]("events")
IngestApi[Event]("events_api", IngestConfigWithDestination(destination=events, path="v2/events"))
IngestPipeline[Event]("clicks", IngestPipelineConfig(path="/custom/clicks/", table=False))
IngestPipeline[Event]("legacy", IngestPipelineConfig(ingest=True, table=False))
IngestPipeline[Event]("quiet", IngestPipelineConfig(ingest=False, table=False, stream=True))
