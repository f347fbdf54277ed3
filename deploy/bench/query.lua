-- wrk script for the query API part of the benchmark (deploy/bench/bench.py runs it).
--
--   wrk -t2 -c8 -d10s --latency -s deploy/bench/query.lua http://127.0.0.1:PORT/ \
--       -- TOKEN ids IDS_FILE SEED      GET /v1/connections/{id}, a random known id each time
--   wrk ... -- TOKEN list PATH          GET PATH (e.g. /v1/connections?status=Linked&limit=100)
--
-- Each thread gets its own id from setup() and seeds its random numbers with it (every wrk
-- thread otherwise starts with the same seed and would ask for the same ids in the same order).
-- done() prints one "BENCH_RESULT {json}" line: answers, 2xx, non-2xx by status, latencies.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local token, mode = args[1], args[2]
   local headers = {["Authorization"] = "Bearer " .. token, ["Accept"] = "application/json"}
   prepared = {}
   if mode == "ids" then
      for line in io.lines(args[3]) do
         if line ~= "" then
            prepared[#prepared + 1] = wrk.format("GET", "/v1/connections/" .. line, headers)
         end
      end
      math.randomseed(tonumber(args[4] or "1") * 1000003 + id * 7919)
   else
      prepared[1] = wrk.format("GET", args[3], headers)
   end
   assert(#prepared > 0, "no requests to send")
   count = #prepared
   answers, ok, non2xx = 0, 0, 0
   statuses = {}
   first_error = ""
end

function request()
   if count == 1 then
      return prepared[1]
   end
   return prepared[math.random(count)]
end

function response(status, headers, body)
   answers = answers + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
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
   local answers_all, ok_all, non2xx_all, statuses_all, first = 0, 0, 0, {}, ""
   for _, t in ipairs(threads) do
      answers_all = answers_all + (t:get("answers") or 0)
      ok_all = ok_all + (t:get("ok") or 0)
      non2xx_all = non2xx_all + (t:get("non2xx") or 0)
      for status, n in pairs(t:get("statuses") or {}) do
         statuses_all[status] = (statuses_all[status] or 0) + n
      end
      if first == "" then
         first = t:get("first_error") or ""
      end
   end
   local parts = {}
   for status, n in pairs(statuses_all) do
      parts[#parts + 1] = string.format('"%d":%d', status, n)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"duration_us":%d,"requests":%d,"answers":%d,"ok":%d,"non2xx":%d,' ..
      '"statuses":{%s},"first_error":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
      summary.duration, summary.requests, answers_all, ok_all, non2xx_all,
      table.concat(parts, ","), json_string(first),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
