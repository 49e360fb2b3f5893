-- One isolate that does something that could take a process down, run by
-- process_spec.lua in a subprocess of its own: `crash.lua CASE`.  The case
-- must come back to this process as the error it is, and the process must
-- go on (a plain run works after it).  Prints "ok" and exits 0, or prints
-- what went wrong and exits 1; a crash is the subprocess killed by a signal.
local isolate = require "isolate"

local cases = {
  -- os.exit ends the isolate, not the process, whatever its status
  exit = {function() os.exit(3) end, "exit", "^Computation ended without result$"},
  -- a string of 2 GiB, the most string.rep makes: the spec runs this case
  -- with less address space than that, so the allocation fails
  memory = {function() return #string.rep("x", (1 << 31) - 64) end, "memory", "not enough memory"},
  -- Lua's stack limit
  stack = {function()
    local function f(n) return 1 + f(n + 1) end
    return f(1)
  end, "error", "stack overflow"},
  -- C's: each level is a metamethod call, which nests the Lua VM once
  -- more on the C stack, until Lua's limit on nested C calls.  A worker
  -- thread's stack must be deep enough for that limit.
  cstack = {function()
    local t = setmetatable({}, {})
    getmetatable(t).__index = function(_, k) return t[k] end
    return t.x
  end, "error", "stack overflow"},
  -- an error object whose __tostring raises: the message has to be made
  -- in the isolate, under protection
  tostring = {function()
    error(setmetatable({}, {__tostring = function() error("no message for you") end}))
  end, "error", "."},
  -- an error in a finalizer, while the isolate closes, is a warning
  gc = {function()
    setmetatable({}, {__gc = function() error("in __gc") end})
    return "fine"
  end},
}

local case = cases[arg[1]]
if case == nil then
  print("no such case: " .. tostring(arg[1]))
  os.exit(2)
end
local fn, kind, pattern = case[1], case[2], case[3]
local ok, err = pcall(isolate.run, fn)
local verdict
if kind == nil then
  verdict = ok and err == "fine" or ("expected \"fine\", got " .. tostring(ok) .. ", " .. tostring(err))
elseif ok then
  verdict = "expected a RemoteError of kind " .. kind .. ", the run returned " .. tostring(err)
elseif getmetatable(err) ~= isolate.RemoteError then
  verdict = "expected a RemoteError of kind " .. kind .. ", got the " .. type(err) .. " " .. tostring(err)
elseif err.kind ~= kind or not tostring(err.message):match(pattern) then
  verdict = string.format("expected kind %s and a message matching %q, got kind %s: %s",
                          kind, pattern, tostring(err.kind), tostring(err.message))
else
  verdict = true
end
if verdict == true and isolate.run(function() return 1 end) ~= 1 then
  verdict = "a plain run after it did not return 1"
end
print(verdict == true and "ok" or verdict)
os.exit(verdict == true and 0 or 1)
