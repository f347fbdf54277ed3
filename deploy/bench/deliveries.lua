-- wrk script for the ingest benchmark (deploy/bench/bench.py writes its input and reads its
-- output; see there).
--
--   wrk -t2 -c8 -d10s --latency -s deploy/bench/deliveries.lua \
--       http://127.0.0.1:PORT/webhooks/codat -- REQUESTS_FILE THREADS
--
-- REQUESTS_FILE holds pre-built, svix-signed raw HTTP requests: a count line, then for each
-- request "<length>\n<bytes>". Each wrk thread takes its own disjoint slice (thread t of T takes
-- requests t, t+T, t+2T, ... in file order) and sends each of them once, in order: nothing is
-- ever sent twice except the redeliveries planned in the file. Thread ids are handed out in
-- setup() (no random numbers are used: every thread starts with the same seed). A thread that
-- runs out of requests stops and says so (the run is then reported as invalid).
--
-- Counted per thread and printed by done() as one "BENCH_RESULT {json}" line: requests sent,
-- answers, 2xx, non-2xx (by status, with the first such answer), 2xx answers saying the
-- delivery was stored for the first time ("disposition":"stored") or was a duplicate.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local path, nthreads = args[1], tonumber(args[2])
   assert(path and nthreads, "usage: -- REQUESTS_FILE THREADS")
   local f = assert(io.open(path, "rb"))
   local total = tonumber(f:read("*l"))
   queue = {}
   for i = 0, total - 1 do
      local len = tonumber(f:read("*l"))
      if i % nthreads == id then
         queue[#queue + 1] = f:read(len)
      else
         f:seek("cur", len)
      end
   end
   f:close()
   position = 1
   slice = #queue
   sent, answers, ok, non2xx, stored, duplicate, exhausted = 0, 0, 0, 0, 0, 0, 0
   statuses = {}
   first_error = ""
end

function request()
   if position > slice then
      if exhausted == 0 then
         exhausted = 1
         wrk.thread:stop()
      end
      return ""  -- nothing is written; the thread is stopping
   end
   local r = queue[position]
   queue[position] = nil
   position = position + 1
   sent = sent + 1
   return r
end

function response(status, headers, body)
   answers = answers + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
      if body and string.find(body, '"disposition":"stored"', 1, true) then
         stored = stored + 1
      elseif body and string.find(body, '"disposition":"duplicate"', 1, true) then
         duplicate = duplicate + 1
      end
   else
      non2xx = non2xx + 1
      statuses[status] = (statuses[status] or 0) + 1
      if first_error == "" then
         first_error = status .. " " .. string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local totals = {sent = 0, answers = 0, ok = 0, non2xx = 0, stored = 0, duplicate = 0,
                   exhausted = 0, slice = 0}
   local statuses_all, first, by_thread = {}, "", {}
   for _, t in ipairs(threads) do
      by_thread[#by_thread + 1] = string.format("%d", t:get("sent") or 0)
      for k, _ in pairs(totals) do
         totals[k] = totals[k] + (t:get(k) or 0)
      end
      for status, count in pairs(t:get("statuses") or {}) do
         statuses_all[status] = (statuses_all[status] or 0) + count
      end
      if first == "" then
         first = t:get("first_error") or ""
      end
   end
   local parts = {}
   for status, count in pairs(statuses_all) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"duration_us":%d,"requests":%d,"sent":%d,"answers":%d,"ok":%d,' ..
      '"non2xx":%d,"stored":%d,"duplicate":%d,"exhausted":%d,"slice":%d,' ..
      '"sent_by_thread":[%s],"statuses":{%s},"first_error":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
      summary.duration, summary.requests, totals.sent, totals.answers, totals.ok,
      totals.non2xx, totals.stored, totals.duplicate, totals.exhausted, totals.slice,
      table.concat(by_thread, ","), table.concat(parts, ","), json_string(first),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
