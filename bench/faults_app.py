# The app bench/faults.py runs under faults: records POSTed to the ingest API `fault_in` go through a Python
# transform into `fault_out`, which table sync puts in the table `fault_out`. Four partitions each, so there are
# four transform units and four table sync units to spread, kill and hand over.
#
# FAULTS_HOPS=2 puts a second Python transform in between (fault_in -> fault_mid -> fault_out), to see whether
# duplicates compound down a chain.
import os

from pydantic import BaseModel

from millrace import IngestPipeline, IngestPipelineConfig, Key, Stream, StreamConfig

PARTITIONS = int(os.environ.get("FAULTS_PARTITIONS", "4"))
HOPS = int(os.environ.get("FAULTS_HOPS", "1"))


class Rec(BaseModel):
    id: Key[str]
    seq: int
    value: int


class Out(BaseModel):
    id: Key[str]
    seq: int
    doubled: int


fault_in = IngestPipeline[Rec](
    "fault_in",
    IngestPipelineConfig(ingest_api=True, stream=StreamConfig(parallelism=PARTITIONS), table=False),
)
fault_out = IngestPipeline[Out](
    "fault_out",
    IngestPipelineConfig(ingest_api=False, stream=StreamConfig(parallelism=PARTITIONS), table=True),
)

if HOPS >= 2:
    fault_mid = Stream[Rec]("fault_mid", StreamConfig(parallelism=PARTITIONS))
    fault_in.get_stream().add_transform(destination=fault_mid, transformation=lambda r: Rec(id=r.id, seq=r.seq, value=r.value + 1))
    fault_mid.add_transform(destination=fault_out.get_stream(), transformation=lambda r: Out(id=r.id, seq=r.seq, doubled=(r.value - 1) * 2))
else:
    fault_in.get_stream().add_transform(destination=fault_out.get_stream(), transformation=lambda r: Out(id=r.id, seq=r.seq, doubled=r.value * 2))
