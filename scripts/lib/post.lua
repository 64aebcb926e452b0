-- wrk: POST the JSON file BENCH_BODY with the key BENCH_KEY (scripts/bench*.sh).
-- With BENCH_FRESH=1 every request's prompt is new (a number put before its user text's
-- first word, from a random start), so nothing about the prompt can be remembered between
-- requests: what a gateway's memos do not help with.
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer " .. os.getenv("BENCH_KEY")

if os.getenv("BENCH_FRESH") == "1" then
  local n
  function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
    n = math.random(1, 1000000000)
  end
  function request()
    n = n + 1
    local body = string.gsub(wrk.body, '"content": "You are', '"content": "' .. n .. ' You are', 1)
    return wrk.format(nil, nil, nil, body)
  end
end
