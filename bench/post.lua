-- wrk script: POST one fixed JSON body (or, without a body file, GET the URL), count every answer
-- that is not 200, and print one machine-readable line at the end for bench/run.py.
--
--   BENCH_AUTHORIZATION="Bearer ..." wrk -t1 -c32 -d10s -s bench/post.lua http://127.0.0.1:PORT/predict -- body.json
--   wrk -t1 -c32 -d10s -s bench/post.lua http://127.0.0.1:PORT/health
--
-- The Authorization header comes from the environment so the token never shows in `ps`.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local headers = {}
   local authorization = os.getenv("BENCH_AUTHORIZATION")
   if authorization and authorization ~= "" then
      headers["Authorization"] = authorization
   end
   if args[1] then
      local file = assert(io.open(args[1], "rb"), "cannot open the body file " .. tostring(args[1]))
      local body = file:read("*a")
      file:close()
      headers["Content-Type"] = "application/json"
      fixed_request = wrk.format("POST", nil, headers, body)
   else
      fixed_request = wrk.format("GET", nil, headers)
   end
   non_200 = 0
   first_bad = ""
end

function request()
   return fixed_request
end

function response(status, headers, body)
   if status ~= 200 then
      non_200 = non_200 + 1
      if first_bad == "" then
         first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
      end
   end
end

-- JSON string escaping for the one free-text field (an error body).
local function quote(text)
   local escaped = text:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end)
   return '"' .. escaped .. '"'
end

function done(summary, latency, requests)
   local bad, sample = 0, ""
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("non_200")
      if sample == "" then
         sample = thread:get("first_bad")
      end
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
         .. '"mean_us": %.1f, "max_us": %d, "non_200": %d, "connect_errors": %d, "read_errors": %d, '
         .. '"write_errors": %d, "timeouts": %d, "first_bad": %s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max, bad, errors.connect, errors.read,
      errors.write, errors.timeout, quote(sample)
   ))
end
