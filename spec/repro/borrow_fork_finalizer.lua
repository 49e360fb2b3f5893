-- Regression (fixed): a task's output that borrows its isolate's state, taken (or not)
-- before a fork, is decoded in the child: the child hands its copy of the
-- parent's state to its own pool, which closes it there, so the isolate's
-- finalizers run twice, once in each process.  (The child should leave
-- the parent's states alone, as orphan_pool does with the stash.)
--   lua5.4 spec/repro/borrow_fork_finalizer.lua [wait|done]
-- Prints "ok" when the finalizer ran in the parent only.
package.cpath = "build/spec/?.so;" .. package.cpath
local isolate = require "isolate"
local posix = require "posix"
local mode = arg and arg[1] or "wait"
local log = os.tmpname()

local task = isolate.spawn(function(path)
  KEEP = setmetatable({}, {__gc = function()	-- runs when the state closes
    local f = io.open(path, "a")
    f:write(require("posix").getpid(), "\n")
    f:close()
  end})
  return string.rep("f", 1100000)
end, log)
if mode == "wait" then assert(task:wait()) else while not task:done() do end end

local function settle()			-- the pool's preparer closes states
  collectgarbage(); collectgarbage()
  assert(isolate.run(function() return 1 end) == 1)
  local t0 = posix.monotonic()
  while posix.monotonic() - t0 < 0.5 do end
end

local pid = posix.fork()
if pid == 0 then
  local ok = pcall(function() assert(#task:await() == 1100000) end)
  task = nil
  settle()
  posix._exit(ok and 0 or 1)
end
local _, code = posix.waitpid(pid)
assert(#task:await() == 1100000)
task = nil
settle()
local pids = {}
for line in io.lines(log) do pids[#pids + 1] = tonumber(line) end
os.remove(log)
assert(code == 0, "the child could not await")
assert(#pids == 1 and pids[1] == posix.getpid(),
  "the isolate's finalizer ran in " .. #pids .. " processes: " .. table.concat(pids, ", ")
  .. " (parent " .. posix.getpid() .. ", child " .. pid .. ")")
print("ok")
