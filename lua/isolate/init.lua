-- isolate: Dart's Isolate.run() for Lua 5.4.
-- The Lua layer over the C core (isolate.core); docs/reference.md is the API.

local VERSION = "isolate 0.1.0"

-- A core of another release (a stale build or install earlier on
-- package.cpath) is refused, named with where it was found.
local core
do
  local where
  core, where = require "isolate.core"
  local version = type(core) == "table" and rawget(core, "_VERSION")
  if version ~= VERSION then
    -- the file it came from: its own word, else what require found
    where = type(core) == "table" and type(rawget(core, "_FILE")) == "string" and core._FILE
      or type(where) == "string" and where
      or package.searchpath("isolate.core", package.cpath)
    error(string.format("isolate: the C core isolate.core (%s) is version %s, but the Lua module " ..
      "is version %q: reinstall isolate (luarocks make)", tostring(where or "found by no path"),
      type(version) == "string" and string.format("%q", (version:gsub("^isolate ", ""))) or "unknown",
      (VERSION:gsub("^isolate ", ""))), 0)
  end
end

local Task = core.Task
local debuglib = package.loaded.debug or debug   -- (a script may drop the global)

local function argerror(n, fname, msg, level)
  error(string.format("bad argument #%d to '%s' (%s)", n, fname, msg), level + 1)
end

local function checktable(v, n, fname, level)
  if type(v) ~= "table" then
    argerror(n, fname, "table expected, got " .. (v == nil and "no value" or type(v)), level + 1)
  end
end

-- the tasks of a list, checked
local function checktasks(tasks, fname, level)
  checktable(tasks, 1, fname, level + 1)
  for i = 1, #tasks do
    if getmetatable(tasks[i]) ~= Task then
      argerror(1, fname, string.format("tasks[%d] is not a task", i), level + 1)
    end
  end
end


-- {======================================================
-- Progress of a map
-- =======================================================

-- a one-line bar on stderr, drawn at most ten times a second, when stderr
-- is a terminal: items, percent, elapsed, rate, ETA; erased at the end
local function progressbar()
  if not core.stderrtty() then return function() end end
  local t0, drawn = core.now(), -1
  return function(done, total)
    local t = core.now()
    if done < total and t - drawn < 0.1 then return end
    drawn = t
    if done >= total then
      io.stderr:write("\r\27[K")
      return
    end
    local elapsed = t - t0
    local rate = elapsed > 0 and done / elapsed or 0
    local eta = rate > 0 and (total - done) / rate or 0
    io.stderr:write(string.format("\r\27[K%d/%d items  %3d%%  %.1fs  %.0f items/s  ETA %.1fs",
      done, total, done * 100 // total, elapsed, rate, eta))
  end
end

-- }======================================================


-- {======================================================
-- Many computations
-- =======================================================

local MAXCHUNK = 65536          -- ISOLATE_MAXCHUNK of the core

local function cancelall(tasks)
  for i = 1, #tasks do tasks[i]:cancel() end
end

-- map(fn, list [, opts]) on 'pool' (nil: the default pool)
local function map(pool, fn, list, opts)
  if type(fn) ~= "function" then
    argerror(1, "map", "function expected, got " .. (fn == nil and "nil" or type(fn)), 3)
  end
  checktable(list, 2, "map", 3)
  local chunk, progress
  if opts ~= nil then
    checktable(opts, 3, "map", 3)
    chunk, progress = opts.chunk, opts.progress
    if chunk ~= nil and (math.type(chunk) ~= "integer" or chunk < 1) then
      argerror(3, "map", "chunk must be an integer >= 1", 3)
    end
    if progress == true then progress = progressbar()
    elseif progress ~= nil and progress ~= false and type(progress) ~= "function" then
      argerror(3, "map", "progress must be a function or true", 3)
    end
  end
  local n, out = #list, {}
  if math.type(n) ~= "integer" or n < 0 or n > 0x7fffffff then
    argerror(2, "map", "its length must be an integer from 0 to 2^31 - 1, got " .. tostring(n), 3)
  end
  local why = pool and core.unusable(pool)
  if why then error(why, 3) end
  if n == 0 then
    if progress then progress(0, 0) end
    return out
  end
  if chunk == nil then        -- every worker gets several chunks
    local workers = (pool or core).stats(pool).workers
    chunk = math.max(1, -(-n // (4 * workers)))
  end
  chunk = math.min(chunk, MAXCHUNK)

  local f = core.encodefn(fn)
  local tasks, firsts, done, failed = {}, {}, 0, nil
  local ok, err = pcall(function()
    for i = 1, n, chunk do
      firsts[#firsts + 1] = i
      core.chunk(pool, f, list, i, math.min(i + chunk - 1, n), tasks)   -- stores its task
    end
    -- collect in list order: the chunks before a failing one have all
    -- run, so its error is the lowest index's; those after it are cancelled
    for c = 1, #tasks do
      local last = c < #tasks and firsts[c + 1] - 1 or n
      local cok, cerr = pcall(core.into, tasks[c], out, firsts[c])
      if cok then
        done = done + (last - firsts[c] + 1)
        if progress then progress(done, n) end
      elseif getmetatable(cerr) == core.RemoteError then
        failed = cerr
        for j = c + 1, #tasks do tasks[j]:cancel() end
        return
      else
        error(cerr, 0)        -- an interrupt
      end
    end
  end)
  if not ok then              -- an item that cannot travel, an interrupt
    cancelall(tasks)
    error(err, 0)
  end
  if failed then
    if debuglib then rawset(failed, "caller", debuglib.traceback(nil, 2)) end   -- the call of map
    error(failed, 0)
  end
  return out
end

-- {======================================================
-- Diagnostics
-- =======================================================

local HEADER = #core.encode()   -- a message of no values

-- a path step, as the encoder names it in its errors
local function keystep(k)
  local tk = type(k)
  if tk == "string" then return "field '" .. k .. "'" end
  if math.type(k) == "integer" then return "[" .. k .. "]" end
  if tk == "number" or tk == "boolean" then return "[" .. tostring(k) .. "]" end
  return "[" .. tk .. " key]"
end

local scalar = {["nil"] = true, boolean = true, number = true, string = true}
local MAXINSIDE = 32            -- a table with more inside lists what fails only
local MAXDEPTH = 200            -- ISOLATE_MAXDEPTH of the core: no deeper walk

-- What fn would carry: an entry per upvalue (of fn and of the Lua
-- functions it carries) and per table, function or userdata inside a
-- table, each once (a second reference costs nothing), with its encoded
-- size or why it cannot travel.  A table with more than MAXINSIDE such
-- values inside lists only those that cannot travel.  Nothing runs: no
-- __isolate either (an object's entry has no size; the tables around it
-- count it as nil).
local function captures(...)
  local fn = ...
  if type(fn) ~= "function" then
    argerror(1, "captures", "function expected, got "
      .. (select("#", ...) == 0 and "no value" or type(fn)), 2)
  end
  if not debuglib then error("isolate.captures needs the debug library", 2) end
  local getinfo, getupvalue, upvalueid = debuglib.getinfo, debuglib.getupvalue, debuglib.upvalueid
  local getmt = debuglib.getmetatable
  local list, seen, cells = {}, {}, {}
  -- the tables that travel by name, as the encoder names them
  local modules = {[core.RemoteError] = "isolate.core.RemoteError",
                   [core.TimeoutError] = "isolate.core.TimeoutError"}
  local loaded = rawget(debuglib.getregistry(), "_LOADED")
  if type(loaded) == "table" then
    for name, m in next, loaded do
      if type(m) == "table" and type(name) == "string" and name ~= "" and not name:find("\0", 1, true) then
        modules[m] = name
      end
    end
  end
  local walk

  local function add(path, v)
    local ok, size = pcall(core.measure, v)
    local e = {path = path, type = type(v), ok = ok}
    if ok then e.bytes = size - HEADER
    else e.why = tostring(size):gsub("^isolate: ", ""):gsub(" %(value #1%)$", "")
                 :gsub("%(value #1 > ", "(at ") end
    list[#list + 1] = e
    return e
  end

  -- each upvalue cell once: closures that share one carry it once
  local function upvalues(path, f, depth)
    for i = 1, math.huge do
      local name, v = getupvalue(f, i)
      if name == nil then break end
      local id = upvalueid(f, i)
      if not cells[id] then
        cells[id] = true
        local at = path .. "upvalue '" .. (name == "" and "?" or name) .. "'"
        if name == "_ENV" then    -- always the other side's globals
          list[#list + 1] = {path = at, type = type(v), ok = true, bytes = 1, by = "globals"}
        else
          walk(at, v, true, depth)
        end
      end
    end
  end

  -- 'always': an entry even for a scalar (an upvalue)
  walk = function(path, v, always, depth)
    local t = type(v)
    if scalar[t] then
      if always then add(path, v) end
      return
    end
    if seen[v] then return end
    seen[v] = true
    local e = add(path, v)
    if modules[v] then e.by = "name '" .. modules[v] .. "'" return end
    local mt = (t == "table" or t == "userdata") and getmt(v)
    local iso = type(mt) == "table" and rawget(mt, "__isolate")
    if iso then
      e.bytes, e.by = nil, "__isolate"
      local imt = getmt(iso)
      if type(iso) ~= "function" and not (type(imt) == "table" and rawget(imt, "__call")) then
        e.ok, e.why = false, "its __isolate is a " .. type(iso) .. ", which cannot be called"
      end
      return
    end
    if depth >= MAXDEPTH then return end      -- (the encoder refuses deeper)
    if t == "table" then
      local inside, keys = {}, 0  -- path, value: what is not a scalar
      for k, x in next, v do
        if not scalar[type(k)] then
          keys = keys + 1
          inside[#inside + 1] = path .. " > key #" .. keys
          inside[#inside + 1] = k
        end
        if not scalar[type(x)] then inside[#inside + 1] = path .. " > " .. keystep(k); inside[#inside + 1] = x end
      end
      if mt then inside[#inside + 1] = path .. " > metatable"; inside[#inside + 1] = mt end
      if #inside <= 2 * MAXINSIDE then
        for i = 1, #inside, 2 do walk(inside[i], inside[i + 1], false, depth + 1) end
      elseif not e.ok then      -- a big table: only what cannot travel
        for i = 1, #inside, 2 do
          if not pcall(core.measure, inside[i + 1]) then walk(inside[i], inside[i + 1], false, depth + 1) end
        end
      end
    elseif t == "function" then
      if getinfo(v, "S").what == "C" then
        if e.ok then e.by = "name" end
      else
        upvalues(path .. " > ", v, depth + 1)
      end
    end
  end

  if getinfo(fn, "S").what == "C" then
    local ok, err = pcall(core.measure, fn)
    if not ok then
      list[1] = {path = "function", type = "function", ok = false,
                 why = tostring(err):gsub("^isolate: ", ""):gsub(" %(value #1%)$", "")}
    end
    return list
  end
  seen[fn] = true
  upvalues("", fn, 1)
  return list
end

-- }======================================================


-- task:await([timeout]) for library code: a RemoteError it raises tells
-- as its 'caller' where the user called the library: 'level' as error's,
-- from the function that calls this (1 from a tail call: `return
-- awaitfrom(...)` leaves that function's caller next)
local function awaitfrom(task, level, timeout)
  local r = table.pack(pcall(task.await, task, timeout))
  if r[1] then return table.unpack(r, 2, r.n) end
  if getmetatable(r[2]) == core.RemoteError and debuglib then
    rawset(r[2], "caller", debuglib.traceback(nil, level + 1))
  end
  error(r[2], 0)
end
core.awaitfrom = awaitfrom      -- (for the adapters)

local function all(tasks)
  checktasks(tasks, "all", 2)
  local out = {}
  for i = 1, #tasks do out[i] = (awaitfrom(tasks[i], 2)) end
  return out
end

-- }======================================================


function core.Pool.map(pool, fn, list, opts)
  return map(pool, fn, list, opts)
end

-- for ... in task:messages() do: every message of the task, as it comes,
-- until the task has ended and every message was received
function Task.__index.messages(task)
  return function() return task:receive() end
end


local isolate = {
  _VERSION = VERSION,

  -- One computation: run fn(...) in a fresh state on a worker thread and
  -- return its results, or raise its error as an isolate.RemoteError.
  run = core.run,

  -- The same, without waiting: a task whose await() returns the results.
  spawn = core.spawn,

  -- {fn(list[1]), fn(list[2]), ...} computed in parallel, in chunks.
  map = function(fn, list, opts) return map(nil, fn, list, opts) end,

  -- The first results of tasks, in list order; and the tasks as they end.
  all = all,
  completed = core.completed,

  -- A pool of its own: isolate.pool{size, name, memory_limit, init}.
  pool = core.pool,

  -- The default pool's counts: workers, busy, queued, done, failed, cancelled.
  stats = core.stats,

  -- Inside an isolate: end it now with these results.
  exit = core.exit,

  -- Inside a spawned task: send these values to its caller, who reads
  -- them with task:receive() or task:messages().
  emit = core.emit,

  -- One descriptor for many tasks: add them, poll it, take those ended.
  completions = core.completions,

  -- What a function would carry: its upvalues, by value, with sizes.
  captures = captures,

  ismain = core.ismain,
  name = core.name,       -- the pool's name inside an isolate; nil for the default pool
  cpus = core.cpus,

  -- The codec on its own: values to a byte string and back.
  encode = core.encode,
  decode = core.decode,

  -- The metatable of every error that comes back from an isolate, and of
  -- the error that await raises when its timeout runs out.
  RemoteError = core.RemoteError,
  TimeoutError = core.TimeoutError,
}

return isolate
