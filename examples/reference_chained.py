# The reference page's "Chaining Transformations" example (ChainedTransformations.py), with
# `from moose_lib` -> `from millrace`; its typos fixed: the missing imports (BaseModel, datetime) and the undefined
# `Date` (a datetime). `millrace dev` runs it when given no app; the Python SDK's tests run it too.
from datetime import datetime

from millrace import IngestPipeline, Key, Stream, IngestPipelineConfig
from pydantic import BaseModel

# Define the schema for raw input data
class RawData(BaseModel):
    id: Key[str]
    value: int

# Define the schema for intermediate transformed data
class IntermediateData(BaseModel):
    id: Key[str]
    transformedValue: int
    transformedAt: datetime

# Define the schema for final transformed data
class FinalData(BaseModel):
    id: Key[str]
    transformedValue: int
    anotherTransformedValue: int
    transformedAt: datetime

# Create the first pipeline for raw data ingestion
# Only create an API and a stream (no table) since we're ingesting the raw data
raw_data = IngestPipeline[RawData]("raw_data", IngestPipelineConfig(
  ingest_api=True,
  stream=True,
  table=False
))

# Create an intermediate stream to hold data between transformations (no api or table needed)
intermediate_stream = Stream[IntermediateData]("intermediate_stream")

# First transformation: double the value and add timestamp
raw_data.get_stream().add_transform(destination=intermediate_stream, transformation=lambda record: IntermediateData(
  id=record.id,
  transformedValue=record.value * 2,
  transformedAt=datetime.now()
))

# Create the final pipeline that will store the fully transformed data
final_data = IngestPipeline[FinalData]("final_stream", IngestPipelineConfig(
  ingest_api=False,
  stream=True,
  table=True
))

# Second transformation: further transform the intermediate data
intermediate_stream.add_transform(destination=final_data.get_stream(), transformation=lambda record: FinalData(
  id=record.id,
  transformedValue=record.transformedValue * 2,
  anotherTransformedValue=record.transformedValue * 3,
  transformedAt=datetime.now()
))
