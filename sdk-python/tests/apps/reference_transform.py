# The reference page's "Single Stream Transformation" example (TransformDestinationStream.py), with
# `from moose_lib` -> `from millrace`; its typos fixed: the missing imports (IngestPipelineConfig, datetime) and
# the undefined `Date` (a datetime).
from datetime import datetime

# Import required libraries
from millrace import IngestPipeline, IngestPipelineConfig, Key
from pydantic import BaseModel

# Define schema for raw incoming data
class RawData(BaseModel):
    id: Key[str]  # Primary key
    value: int    # Value to be transformed

# Define schema for transformed data
class TransformedData(BaseModel):
    id: Key[str]           # Primary key (preserved from raw data)
    transformedValue: int  # Transformed value
    transformedAt: datetime    # Timestamp of transformation

# Create pipeline for raw data - only for ingestion and streaming
raw_data = IngestPipeline[RawData]("raw_data", IngestPipelineConfig(
  ingest_api = True,   # Enable API endpoint
  stream = True,   # Create stream for buffering
  table = False    # No table needed for raw data
))

# Create pipeline for transformed data - for storage only
transformed_data = IngestPipeline[TransformedData]("transformed_data", IngestPipelineConfig(
  ingest_api = False,  # No direct API endpoint
  stream = True,   # Create stream to receive transformed data
  table = True     # Store transformed data in table
))

# Define a named transformation function
def transform_function(record: RawData) -> TransformedData:
  return TransformedData(
    id=record.id,
    transformedValue=record.value * 2,
    transformedAt=datetime.now()
  )

# Connect the streams with the transformation function
raw_data.get_stream().add_transform(
  destination=transformed_data.get_stream(), # Use the get_stream() method to get the stream object from the IngestPipeline
  transformation=transform_function # Can also define a lambda function
)
