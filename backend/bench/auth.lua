-- wrk script: a bearer token on every request, rotating through BENCH_TOKENS_FILE (one token
-- a line), with a browser's Accept-Encoding, counting non-2xx answers, and one
-- machine-readable summary line at the end.

local tokens = {}
local counter = 0
local non2xx = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("BENCH_TOKENS_FILE")
  if path then
    for line in io.lines(path) do
      if #line > 0 then tokens[#tokens + 1] = line end
    end
  end
  -- BENCH_TOKENS_START continues a rotation where the previous run left it (the cold-cache
  -- scenario: no token comes round again before more distinct ones than the caches hold).
  -- Otherwise threads start at different tokens, so they do not ask for the same users in
  -- lockstep.
  counter = tonumber(os.getenv("BENCH_TOKENS_START") or "") or math.random(0, 1000)
end

-- What a browser sends with every request (the SPA's users): the API gzips what it can send
-- gzipped, as Nginx in front of it would otherwise do.
local ACCEPT_ENCODING = "gzip, deflate, br"

function request()
  local headers = {["Accept-Encoding"] = ACCEPT_ENCODING}
  if #tokens > 0 then
    counter = counter + 1
    headers["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]
  end
  return wrk.format("GET", nil, headers)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeout_errors": %d, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
