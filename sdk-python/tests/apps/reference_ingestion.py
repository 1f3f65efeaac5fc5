# The reference page's "Streams for Ingestion" example (IngestionStream.py), with `from moose_lib` -> `from millrace`.
from millrace import IngestPipeline, IngestPipelineConfig, Key
from pydantic import BaseModel

class RawData(BaseModel):
    id: Key[str]
    value: int

raw_ingestion_stream = IngestPipeline[RawData]("raw_data", IngestPipelineConfig(
  ingest_api = True, # Creates an ingestion API endpoint at `POST /ingest/raw_data`
  stream = True, # Buffers data between the ingestion API and the database table
  table = True, # Creates an OLAP table named `raw_data`
))
