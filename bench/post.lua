-- wrk script: POST pre-signed, distinct Stripe events to /webhooks/stripe.
--
--   wrk -t2 -c16 -d3s -s bench/post.lua http://127.0.0.1:PORT -- BODIES_FILE RATE 2
--   (RATE 0: as fast as the server answers; then wrk's -t again)
--
-- BODIES_FILE holds one delivery a line: "<Stripe-Signature header>\t<JSON body>", signed by
-- bench/run.py before the clock starts, so wrk spends no time on HMACs. Thread k of n sends
-- lines k, k+n, k+2n, …: every request is a distinct event. If a thread runs out of lines it
-- starts again from its first (those would be stored as duplicates); `done` reports how many
-- requests that was, and bench/run.py refuses the figure if it is not 0.
-- With RATE (requests/s over all connections), each thread sends on a timetable, one request
-- every threads/RATE seconds: a connection that gets its answer waits for the thread's next free
-- slot (not a fixed pause after the answer, which would lower the rate by the server's latency).
-- wrk asks delay() before every request, a connection's first included. A server that falls
-- behind ties up every connection, and the rate achieved falls below RATE.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1000.0 + tonumber(timespec.tv_nsec) / 1e6
end

local lines = {}
local position = 0
local interval_ms = nil  -- between two slots of this thread's timetable
local started_ms = nil
local slots = 0          -- slots taken so far
sent = 0
wrapped = 0

function init(args)
   local path = args[1]
   local thread_count = tonumber(args[3] or "1")
   local index = 0
   for line in io.lines(path) do
      if index % thread_count == id then
         local tab = line:find("\t", 1, true)
         lines[#lines + 1] = { line:sub(1, tab - 1), line:sub(tab + 1) }
      end
      index = index + 1
   end
   if args[2] and args[2] ~= "0" then
      interval_ms = 1000.0 * thread_count / tonumber(args[2])
      started_ms = now_ms()
   end
end

function delay()
   if interval_ms == nil then
      return 0
   end
   local slot_ms = started_ms + slots * interval_ms
   slots = slots + 1
   return math.max(0, slot_ms - now_ms())
end

function request()
   position = position + 1
   sent = sent + 1
   if position > #lines then
      position = 1
      wrapped = wrapped + 1
   end
   local line = lines[position]
   return wrk.format("POST", "/webhooks/stripe",
                     { ["Content-Type"] = "application/json", ["Stripe-Signature"] = line[1] }, line[2])
end

function done(summary, latency, requests)
   local again = 0
   for _, thread in ipairs(threads) do
      again = again + (thread:get("wrapped") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
      '"status_errors":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"wrapped":%d}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout, again))
end
