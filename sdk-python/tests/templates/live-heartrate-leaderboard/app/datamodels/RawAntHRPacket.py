from pydantic import BaseModel
from millrace import Key


class RawAntHRPacket(BaseModel):
    device_id: Key[int]
    packet_count: int
    ant_hr_packet: list[int]
