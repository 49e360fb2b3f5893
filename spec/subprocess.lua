-- Scenarios that could crash or hang the process they run in (fork,
-- Ctrl-C, allocation failures) run in a subprocess of their own, under
-- timeout(1): whatever happens there is one failed spec, never a hung or
-- crashed run.  A subprocess gets the working tree's paths, and the core
-- and interpreter of this run: lua5.4 with build/?.so for `make test`,
-- the TSan host with build/tsan/?.so for `make tsan`.
package.cpath = "build/spec/?.so;" .. package.cpath
local posix = require "posix"

local M = {}

-- the package.cpath template through which this run found its core
local function coretemplate()
  for template in package.cpath:gmatch("[^;]+") do
    local f = io.open((template:gsub("%?", "isolate/core")))
    if f then
      f:close()
      return template
    end
  end
  return "build/?.so"
end

M.path = "lua/?.lua;lua/?/init.lua;;"
M.cpath = coretemplate() .. ";build/spec/?.so;;"

-- the interpreter that runs this spec run (arg's lowest index), lua5.4 if
-- it cannot be told
function M.interpreter()
  local i = -1
  while arg and arg[i - 1] ~= nil do i = i - 1 end
  return arg and arg[i] or "lua5.4"
end

-- an interpreter whose state's allocations fail on request (spec/host.c):
-- this run's if it is the host already (the TSan run), else build/host
function M.host()
  if host_failalloc ~= nil then return M.interpreter() end
  return "build/host"
end

-- whether the run is under a sanitizer, whose runtime the subprocess
-- inherits (LD_PRELOAD, or an instrumented host)
function M.sanitized()
  return (os.getenv("LD_PRELOAD") or ""):match("san") ~= nil or os.getenv("TSAN_OPTIONS") ~= nil
end

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The sanitizers' options for the subprocess: this run's, and for TSan,
-- which by default kills the forked child of a threaded process as soon
-- as it starts a thread (as a child with a pool must), die_after_fork=0.
local function sanitizer_env()
  local env = {}
  local asan, tsan = os.getenv("ASAN_OPTIONS"), os.getenv("TSAN_OPTIONS")
  if asan then env[#env + 1] = "ASAN_OPTIONS=" .. quote(asan) end
  if tsan then
    env[#env + 1] = "TSAN_OPTIONS=" .. quote((tsan ~= "" and tsan .. ":" or "") .. "die_after_fork=0")
  end
  return table.concat(env, " ")
end

-- "NAME=value" settings, quoted for the shell
local function settings(list)
  local quoted = {}
  for i, setting in ipairs(list or {}) do quoted[i] = quote(setting) end
  return table.concat(quoted, " ")
end

--[[
Start `interpreter script args...` with its stdout on a pipe that the
caller reads (p.out), its stderr in a file.  Options:
  timeout      seconds before timeout(1) sends TERM (KILL 2 s later);
               default 20
  interpreter  default M.interpreter()
  flags        a list of options for the interpreter, before the script
               (lua.c's, such as "-W"; the spec host takes none)
  ulimit_v     a limit on address space, in KiB (ulimit -v)
  preload      a shared library for LD_PRELOAD (plain runs only: a
               sanitizer's runtime must come first)
  env          a list of more "NAME=value" settings
]]
function M.start(script, args, opts)
  opts = opts or {}
  local errfile = os.tmpname()
  local cmd = string.format("%senv %s %s LUA_PATH_5_4=%s LUA_CPATH_5_4=%s timeout -k 2 %s %s",
    opts.ulimit_v and ("ulimit -v " .. math.tointeger(opts.ulimit_v) .. " && ") or "",
    sanitizer_env() .. " " .. settings(opts.env),
    opts.preload and ("LD_PRELOAD=" .. quote(opts.preload)) or "", quote(M.path), quote(M.cpath),
    tostring(opts.timeout or 20), quote(opts.interpreter or M.interpreter()))
  for _, flag in ipairs(opts.flags or {}) do cmd = cmd .. " " .. quote(flag) end
  cmd = cmd .. " " .. quote(script)
  for _, a in ipairs(args or {}) do cmd = cmd .. " " .. quote(a) end
  cmd = cmd .. " 2>" .. quote(errfile)
  return {out = assert(io.popen(cmd, "r")), errfile = errfile, command = cmd,
          timeout = opts.timeout or 20, started = posix.monotonic()}
end

-- the next line of its output, without the newline; nil at the end
function M.readline(p)
  local line = p.out:read("L")
  if line == nil then return nil end
  p.stdout = (p.stdout or "") .. line
  return (line:gsub("\n$", ""))
end

--[[
Read the rest of the output and wait for the end.  Returns a record:
  stdout, stderr   what it wrote
  code             its exit status, or nil if a signal ended it
  signal           the signal that ended it, or nil
  timedout         true if timeout(1) had to end it
  seconds          from start to end
  status           how it ended, in words
  report           the status and both outputs, for a failed assertion
]]
function M.finish(p)
  local r = {}
  r.stdout = (p.stdout or "") .. p.out:read("a")
  local _, how, n = p.out:close()
  r.seconds = posix.monotonic() - p.started
  local f = io.open(p.errfile)
  r.stderr = f and f:read("a") or ""
  if f then f:close() end
  os.remove(p.errfile)
  -- through sh and timeout(1): 124 is a timeout, 137 the KILL after it,
  -- 128 + n a death by signal n
  if how == "signal" or n >= 128 then
    r.signal = how == "signal" and n or n - 128
    r.timedout = r.signal == 9 and r.seconds >= p.timeout
  elseif n == 124 then
    r.timedout = true
  else
    r.code = n
  end
  r.status = r.timedout and string.format("timed out after %g s", p.timeout)
    or r.signal and ("killed by signal " .. r.signal)
    or ("exit status " .. r.code)
  r.report = string.format("%s\n-- stdout:\n%s\n-- stderr:\n%s", r.status, r.stdout, r.stderr)
  return r
end

-- start, then finish
function M.run(script, args, opts)
  return M.finish(M.start(script, args, opts))
end

-- clang 14's AddressSanitizer does not lock its allocator around fork():
-- a child of a threaded process can find a lock of it held by a thread of
-- the parent, and hang in its free() as soon as it starts a thread (gdb
-- shows the child's new threads there).  The fork specs run plainly, under
-- TSan and under valgrind; under ASan they are pending (true: it is).
-- 'pending' is busted's, from the spec's environment.
function M.asan_fork(pending)
  if (os.getenv("LD_PRELOAD") or ""):match("asan") then
    pending("clang 14's ASan runtime is not fork-safe in threaded processes")
    return true
  end
  return false
end

return M
