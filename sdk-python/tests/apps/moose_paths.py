# A moose_lib app with only its imports changed (moose_lib -> millrace), importing from moose_lib's own module
# paths: dmv2 and its submodules, data_models, commons, main and clients.redis_client. A transform keeps a count per
# device in MooseCache and logs with Logger; a dead letter consumer recovers failed readings with as_typed().
import os
from enum import IntEnum

from millrace.clients.redis_client import MooseCache
from millrace.commons import CliLogData, Logger, cli_log
from millrace.data_models import Key, StringToEnumMixin
from millrace.dmv2 import IngestPipeline, IngestPipelineConfig, MooseModel
from millrace.dmv2.life_cycle import LifeCycle
from millrace.dmv2.olap_table import OlapConfig, OlapTable
from millrace.dmv2.registry import get_stream
from millrace.dmv2.stream import DeadLetterModel, Stream, StreamConfig
from millrace.main import StreamingFunction

# Cache keys of one test run apart from another's.
RUN = os.environ.get("MOOSE_TEST_RUN", "local")


class Color(StringToEnumMixin, IntEnum):
    RED = 1
    GREEN = 2


class Reading(MooseModel):
    id: Key[str]
    device: str
    color: Color
    value: int


class Tally(MooseModel):
    id: Key[str]
    device: str
    color: Color
    seen: int  # readings of this device so far, counted in MooseCache


readings = IngestPipeline[Reading]("readings", IngestPipelineConfig(ingest_api=True, stream=True, table=False, dead_letter_queue=True))
tallies_table = OlapTable[Tally]("tallies", OlapConfig(order_by_fields=["id"], life_cycle=LifeCycle.FULLY_MANAGED))
tallies = Stream[Tally]("tallies", StreamConfig(destination=tallies_table))

log = Logger(action="Tally")
log.info("moose_paths loaded")  # at import: a line without a function


def tally(r: Reading) -> Tally:
    if r.value < 0:
        raise ValueError(f"negative reading {r.value}")
    cache = MooseCache()
    key = f"{RUN}:{r.device}"
    seen = int(cache.get(key) or 0) + 1
    cache.set(key, str(seen), ttl_seconds=600)
    log.info(f"reading {r.id} from {r.device}: seen {seen}")
    return Tally(id=r.id, device=r.device, color=r.color, seen=seen)


tally_fn = StreamingFunction(run=tally)
get_stream("readings").add_transform(tallies, tally_fn.run)


def recovered(dead: DeadLetterModel[Reading]) -> None:
    original = dead.as_typed()
    cli_log(CliLogData(action="Recovered", message=f"{original.id} {original.color.name}", message_type=CliLogData.WARNING))


readings.get_dead_letter_queue().add_consumer(recovered)
