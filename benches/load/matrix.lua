-- wrk script for the scopegate load harness: realistic Matrix client traffic.
--
-- Environment (read in each wrk thread):
--   BENCH_REQS      file of "METHOD path" lines (the request mix; see run.sh)
--   BENCH_TOKENS    file of bearer tokens, one a line; requests cycle through
--                   them (one line = the same token every time)
--   BENCH_MODE      "mix" (default): requests pre-built in init(), so the
--                   generator does almost no work per request;
--                   "flood": every request carries a new random token, and each
--                   thread stops after BENCH_LIMIT requests
--   BENCH_LIMIT     flood mode: requests per thread
--   BENCH_PUT_EVERY one request in this many is a PUT from the mix (default 10)
--
-- done() prints one machine-readable line starting with "RESULT".

local thread_counter = 0
function setup(thread)
  thread:set("thread_id", thread_counter)
  thread_counter = thread_counter + 1
end

local function lines(path)
  local out = {}
  local f = assert(io.open(path, "r"), "cannot open " .. tostring(path))
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  return out
end

local BODY = '{"msgtype":"m.text","body":"hello from the scopegate load harness"}'
local gets, puts, tokens = {}, {}, {}
local prebuilt, n_pre, idx = {}, 0, 0
local mode, limit, sent = "mix", 0, 0
local put_every = 10
local tid = 0

local function build(method, path, token, seq)
  local headers = {
    ["Accept"] = "application/json",
    ["User-Agent"] = "Element/1.11.80 (scopegate-load)",
  }
  if token then headers["Authorization"] = "Bearer " .. token end
  local body = nil
  if method == "PUT" then
    -- a fresh transaction id, as a client would send
    path = path:gsub("/[^/]*$", "/bench" .. tid .. "_" .. seq)
    headers["Content-Type"] = "application/json"
    body = BODY
  end
  return wrk.format(method, path, headers, body)
end

local function pick(seq)
  if #puts > 0 and seq % put_every == put_every - 1 then
    return "PUT", puts[math.floor(seq / put_every) % #puts + 1]
  end
  return "GET", gets[seq % #gets + 1]
end

function init(args)
  tid = thread_id or 0
  mode = os.getenv("BENCH_MODE") or "mix"
  put_every = tonumber(os.getenv("BENCH_PUT_EVERY") or "10")
  limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
  for _, l in ipairs(lines(os.getenv("BENCH_REQS"))) do
    local method, path = l:match("^(%u+)%s+(%S+)$")
    if method == "PUT" then puts[#puts + 1] = path elseif method then gets[#gets + 1] = path end
  end
  assert(#gets > 0, "no GET requests in BENCH_REQS")
  local tf = os.getenv("BENCH_TOKENS")
  if tf and tf ~= "" then tokens = lines(tf) end
  math.randomseed(os.time() * 1000 + tid)
  if mode == "mix" then
    -- Enough distinct requests to walk every path with every token, capped.
    n_pre = math.max(#gets * put_every, #tokens)
    if n_pre > 8192 then n_pre = math.max(8192, #tokens) end
    local off = tid * 7919
    for i = 0, n_pre - 1 do
      local seq = i + off
      local method, path = pick(seq)
      local token = nil
      if #tokens > 0 then token = tokens[seq % #tokens + 1] end
      prebuilt[i + 1] = build(method, path, token, seq)
    end
  end
end

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

function request()
  if mode == "flood" then
    sent = sent + 1
    if limit > 0 and sent >= limit then wrk.thread:stop() end
    -- distinct by construction (thread id + counter), random-looking after
    local token = string.format("flood%02d%08x", tid, sent) .. hex(24)
    local method, path = pick(sent + tid * 7919)
    return build(method, path, token, sent)
  end
  idx = idx % n_pre + 1
  return prebuilt[idx]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f " ..
    "err_status=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
