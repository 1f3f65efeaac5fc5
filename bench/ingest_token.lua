-- Runs ../shared/peer-bench/ingest.lua (PEER_INGEST_LUA) unchanged, with `Authorization: Bearer $BENCH_TOKEN` added
-- to every request it builds: the ingest benchmark with tokens (and TLS, from an https:// URL) on.
local format = wrk.format
wrk.format = function(method, path, headers, body)
  headers = headers or {}
  headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
  return format(method, path, headers, body)
end
dofile(os.getenv("PEER_INGEST_LUA"))
