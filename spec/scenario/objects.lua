-- Objects that travel, where the process itself is under test, run by
-- objects_spec.lua in a subprocess of its own: `objects.lua MODE`.
--   streams   io.stdout and io.stderr sent into isolates in every position
--             (argument, upvalue, nested field, spawn, map item, emit,
--             result) and written through there: each write is one line,
--             in program order (stdout is one FILE of the process, which
--             the isolates share); prints "done" last
--   reenter   an __isolate that encodes a deep value whose innermost
--             object has that __isolate: each nesting re-enters the
--             encoder from user code, 195 levels of C recursion at a time,
--             until Lua's limit on C calls.  Must be an error ("C stack
--             overflow"), never a crash: prints "ok" and the error
--   reenter-run  the same through isolate.run, which the caller may run
--             on its own thread
--   alloc     (under build/host, spec/host.c) encode and decode, and
--             isolate.run, of a graph of objects and streams, with each
--             allocation request of the caller failing in turn: each
--             attempt must give the right answer or a memory error, as
--             alloc.lua's steps must.  Prints one line per outcome and
--             step, "ok" last if all passed
local isolate = require "isolate"

local mode = arg[1]

if mode == "streams" then
  local out, err = io.stdout, io.stderr
  isolate.run(function(f, s) f:write(s) end, io.stdout, "argument stdout\n")
  isolate.run(function(f) f:write("argument stderr\n") end, io.stderr)
  isolate.run(function() out:write("upvalue stdout\n"); err:write("upvalue stderr\n") end)
  isolate.run(function(t) t.a.b[1]:write("field stderr\n") end, {a = {b = {io.stderr}}})
  isolate.run(function(t) for f, line in pairs(t) do f:write(line) end end, {[io.stdout] = "key stdout\n"})
  isolate.spawn(function(f) f:write("spawn stdout\n") end, out):await()
  isolate.map(function(f) f:write("map item\n") return true end, {out, out}, {chunk = 1})
  local t = isolate.spawn(function() isolate.emit(io.stdout, io.stderr) end)
  local o, e = t:receive()
  o:write("emit stdout\n")
  e:write("emit stderr\n")
  isolate.run(function() return io.stderr end):write("result stderr\n")
  -- nested: an isolate passes its own stdout on to an isolate of its own
  isolate.run(function() return isolate.run(function(f) f:write("nested stdout\n") end, io.stdout) end)
  -- an __isolate object whose constructor writes on arrival
  local greeter = setmetatable({}, {__isolate = function()
    return function(f) f:write("constructor stdout\n") return true end, io.stdout
  end})
  isolate.run(function(g) return g end, greeter)
  print("done")
elseif mode == "reenter" or mode == "reenter-run" then
  local mt = {}
  local function deep(x) for _ = 1, 195 do x = {x} end return x end
  mt.__isolate = function() return string.len, isolate.encode(deep(setmetatable({}, mt))) end
  local ok, e
  if mode == "reenter" then
    ok, e = pcall(isolate.encode, deep(setmetatable({}, mt)))
  else
    ok, e = pcall(isolate.run, function(v) return v end, deep(setmetatable({}, mt)))
    if type(e) == "table" then e = e.message end
  end
  if not ok and tostring(e):find("stack overflow", 1, true) then
    print("ok")
  else
    print("unexpected: " .. tostring(ok) .. " " .. tostring(e):sub(1, 200))
    os.exit(1)
  end
elseif mode == "alloc" then
  local mt = {__isolate = function(o)
    return function(v, t) return {v = v, t = t} end, o.v, {1, 2, 3, s = "x"}
  end}
  local shared = setmetatable({v = 1}, mt)
  local graph = {a = shared, b = {shared, setmetatable({v = 2}, mt)}, out = io.stdout,
                 c = setmetatable({}, {__isolate = function() return string.rep, "ab", 3 end})}
  local function right(r)
    return type(r) == "table" and r.a == r.b[1] and r.a.v == 1 and r.b[2].t.s == "x"
       and r.out == io.stdout and r.c == "ababab"
  end
  local steps = {
    {"codec", function() return isolate.decode(isolate.encode(graph), {trusted = true}) end},
    {"run", function() return isolate.run(function(g) return g end, graph) end},
  }
  local function attempt(step, n)
    local co = coroutine.create(function()
      host_failalloc(n)
      local r = step()
      host_failalloc(0)
      return r
    end)
    local ok, r = coroutine.resume(co)
    host_failalloc(0)
    return ok, r
  end
  local bad = 0
  for _, s in ipairs(steps) do
    local name, step = s[1], s[2]
    assert(right(step()), "the step does not work without failures")
    host_failalloc(0)
    coroutine.resume(coroutine.create(step))
    local N = host_failalloc(0)
    local outcomes = {}
    for n = 1, N + 10 do
      local ok, r = attempt(step, n)
      local what
      if ok then what = right(r) and "right" or "WRONG ANSWER"
      else
        local msg = getmetatable(r) == isolate.RemoteError and r.message or tostring(r)
        what = msg == "not enough memory" and "memory error" or ("NOT A MEMORY ERROR: " .. msg)
      end
      if what:match("^[A-Z]") then bad = bad + 1 end
      outcomes[what] = (outcomes[what] or 0) + 1
      assert(isolate.run(function() return 1 end) == 1)
    end
    local lines = {}
    for what, count in pairs(outcomes) do lines[#lines + 1] = name .. ": " .. count .. " " .. what end
    table.sort(lines)
    print(table.concat(lines, "\n"))
  end
  if bad == 0 then print("ok") else os.exit(1) end
else
  print("no such mode: " .. tostring(mode))
  os.exit(2)
end
