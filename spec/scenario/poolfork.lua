-- Fork with a pool of one's own, run by process_spec.lua in a subprocess
-- of its own: `poolfork.lua spawn|run|task`.
--   spawn  an isolate of the pool forks (the task ran by spawn): the
--          child ends when the isolate's function ends there, status 0
--   run    the same through pool:run, which may run its isolate in the
--          script's own thread: the child must not go on with the script
--   task   the child awaits a task of the pool that ran at the fork: it
--          fails at once, it runs in the parent only
-- It prints "CHECK: ok" or what went wrong; an alarm ends what hangs.
local isolate = require "isolate"
local posix = require "posix"

io.stdout:setvbuf("no")
local mode = arg[1]
local pool = isolate.pool{size = 1}
posix.alarm(15)

local function forks()
  local posix = require "posix"
  return posix.fork()
end

if mode == "spawn" or mode == "run" then
  local pid = mode == "spawn" and pool:spawn(forks):await() or pool:run(forks)
  if pid == 0 then
    io.stdout:write("the child went on with the script\n")
    posix._exit(3)
  end
  local how, code = posix.waitpid(pid)
  io.stdout:write("child: ", (how == "exited" and code == 0) and "ok" or (tostring(how) .. " " .. tostring(code)), "\n")
elseif mode == "task" then
  local task = pool:spawn(function()
    local t0 = os.time()
    while os.time() - t0 < 2 do end
    return "parent"
  end)
  while task:status() == "queued" do end
  local pid = posix.fork()
  if pid == 0 then
    local ok, err = task:result()
    io.stdout:write("child: ", (not ok and tostring(err.message):find("forked", 1, true)) and "ok"
      or ("got " .. tostring(err)), "\n")
    posix._exit(0)
  end
  posix.waitpid(pid)
  io.stdout:write("parent: ", task:await() == "parent" and "ok" or "wrong result", "\n")
end
