local isolate = require "isolate"

-- Round trips of random value graphs: every graph that goes through the
-- codec, or through an isolate and back, must come back isomorphic to the
-- original.  The generator has its own PRNG, so a case number and a seed
-- name one graph on every build.  To rerun one case:
--   ISOLATE_PROPERTY_SEED=<seed> ISOLATE_PROPERTY_CASE=<n> make test
-- ISOLATE_PROPERTY_SCALE=0.1 runs a tenth of the cases (`make valgrind`).

-- Decode options for bytes this process wrote itself.
local TRUSTED = {trusted = true}

local SEED = tonumber(os.getenv("ISOLATE_PROPERTY_SEED")) or 20240607
local ONLY = tonumber(os.getenv("ISOLATE_PROPERTY_CASE"))
local SCALE = tonumber(os.getenv("ISOLATE_PROPERTY_SCALE")) or 1
local FULL = not ONLY and SCALE >= 1     -- all the cases: check what they covered


--[[ The PRNG: xorshift64* on Lua's 64-bit integers, whose arithmetic wraps
     and whose >> is a logical shift; splitmix64 makes a case's seed. ]]

local function splitmix(x)
  x = x + 0x9E3779B97F4A7C15
  x = (x ~ (x >> 30)) * 0xBF58476D1CE4E5B9
  x = (x ~ (x >> 27)) * 0x94D049BB133111EB
  return x ~ (x >> 31)
end

local Rng = {}
Rng.__index = Rng

local function rng(seed)
  local s = splitmix(seed)
  return setmetatable({s = s ~= 0 and s or 1}, Rng)
end

function Rng:bits()
  local x = self.s
  x = x ~ (x >> 12)
  x = x ~ (x << 25)
  x = x ~ (x >> 27)
  self.s = x
  return x * 0x2545F4914F6CDD1D
end

function Rng:int(n) return (self:bits() >> 1) % n + 1 end    -- 1..n
function Rng:chance(percent) return self:int(100) <= percent end
function Rng:pick(list) return list[self:int(#list)] end


--[[ Scalars ]]

local INTEGERS = {
  0, 1, -1, 0x7f, 0x80, -0x80, -0x81, 0xff, 0x100, 0x7fff, 0x8000, -0x8000, -0x8001,
  0xffff, 0x7fffffff, 0x80000000, -0x80000000, -0x80000001, 0xffffffff, 1 << 40, -(1 << 40),
  math.maxinteger, math.maxinteger - 1, math.mininteger, math.mininteger + 1,
}

local FLOATS = {
  0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 0.1, math.pi, 1 / 0, -1 / 0, 0 / 0, -(0 / 0),
  2.0 ^ -1074, 2.0 ^ -1022 - 2.0 ^ -1074, 2.0 ^ -1022,        -- subnormals, the least normal
  1.7976931348623157e308, 2.0 ^ 53, 2.0 ^ 63, -2.0 ^ 63, 2.0 ^ 64,
}

-- keys: strings often repeat, so later pairs overwrite earlier ones
local NAMES = {"x", "y", "n", "id", "name", "value", "", "__index", "__name", "__call", "a.b", "ключ"}

-- lengths where encodings change: short strings end at 31 (the codec's) and
-- 40 (Lua's), one-byte lengths at 127, two-byte ones at 16383
local LENGTHS = {31, 32, 33, 40, 41, 127, 128, 255, 256, 16383, 16384}

local function integer(r)
  local k = r:int(10)
  if k <= 4 then return r:pick(INTEGERS) end
  if k <= 7 then return r:int(200) - 100 end
  local v = r:bits() >> (64 - r:int(64))    -- 1 to 64 random bits
  return r:chance(50) and -v or v
end

local function float(r)
  local k = r:int(10)
  if k <= 4 then return r:pick(FLOATS) end
  if k <= 7 then return (r:int(2000001) - 1000001) / 64 end       -- integral ones included
  return (string.unpack("<d", string.pack("<i8", r:bits())))    -- any bits: NaN payloads too
end

local function bytes(r, n, lo, hi)
  local t = {}
  for i = 1, math.min(n, 256) do t[i] = string.char(lo + r:int(hi - lo + 1) - 1) end
  local s = table.concat(t)
  return n <= 256 and s or s:rep(n // 256 + 1):sub(1, n)
end

local function str(r)
  local k = r:int(20)
  if k <= 8 then return r:pick(NAMES) end
  if k <= 12 then return bytes(r, r:int(32) - 1, 97, 122) end      -- short: 0 to 31 bytes
  if k <= 15 then return bytes(r, 31 + r:int(200), 32, 126) end   -- long: 32 to 231
  if k <= 18 then return bytes(r, r:int(64) - 1, 0, 255) end       -- binary, \0 and 128-255
  if k == 19 then return bytes(r, r:pick(LENGTHS), 0, 255) end
  return ("\0\128\255"):rep(r:int(20))
end


--[[ Functions.  Each answers f("probe") with values made from its upvalues
     and changes nothing, so a copy can be compared with its original by
     calling both. ]]

local function reader(a, b) return function(op) return a, b end end

local function recursive(a)
  local self
  self = function(op) return self, a end
  return self
end

local function withenv(a) return function(op) return type(a), a end end   -- has _ENV

-- a function key: its id lets the comparison find its copy among a table's keys
local function keyfn(id, a) return function(op) return "keyfn", id, a end end

-- two closures sharing the upvalue 'v'
local function cell(v, a, b)
  local function get(op) return v, a end
  local function set(op, x)
    if op == "set" then v = x return end
    return v, b
  end
  return get, set
end

-- three closures over two upvalues, each shared by two of them, at
-- different indexes: f1 and f2 share x, f2 and f3 share y
local function chain(x, y)
  local function f1(op) return x end
  local function f2(op, v)
    if op == "sety" then y = v return end
    if op == "setx" then x = v return end
    return y, x
  end
  local function f3(op) return y end
  return f1, f2, f3
end

-- a function with a nested prototype: each call makes a new closure
local function maker(a)
  return function(op) return function(op2) return a end, a end
end

-- a closure with 100 upvalues
local WIDE = 100
local wide
do
  local names = {}
  for i = 1, WIDE do names[i] = "u" .. i end
  names = table.concat(names, ", ")
  wide = assert(load("local " .. names .. " = ...\nreturn function(op) return " .. names .. " end",
    "=wide"))
end

-- bound by name, not copied: the same object comes back
local BOUND_LIST = {string, math, table, package.loaded._G, math.sqrt, string.format, select}
local BOUND = {}
for _, v in ipairs(BOUND_LIST) do BOUND[v] = true end


--[[ The generator.  A graph is 0 to 4 values, now and then up to 300;
     'budget' bounds how many tables and functions it makes, and so the
     encoder's depth.  Tables and functions used as keys carry an id, which
     the comparison uses to find a key's copy among the copy's keys. ]]

local IDKEY = "\0id"     -- the field that names a table used as a key
local MAXDEPTH = 8

local Gen = {}
Gen.__index = Gen

local function generator(seed, functions)
  local r = rng(seed)
  return setmetatable({
    r = r,
    functions = functions,    -- functions, modules and the globals table may appear
    budget = r:chance(5) and 60 + r:int(40) or r:int(25),
    nextid = 0,
    tables = {},              -- every table made so far
    keyables = {},            -- tables and functions with an id, usable as keys
    ancestors = {},           -- tables under construction
    metas = {},               -- metatables made so far, to share
    funcs = {},               -- functions made so far
    pending = {},             -- the other closure of a cell, not placed yet
    cells = {},               -- {get, set} pairs
  }, Gen)
end

function Gen:id()
  self.nextid = self.nextid + 1
  return self.nextid
end

function Gen:key(depth)
  local r = self.r
  local k = r:int(100)
  if k <= 25 then return integer(r) end
  if k <= 35 then
    local x = float(r)
    return x == x and x or 0.5           -- not NaN
  end
  if k <= 62 then return str(r) end
  if k <= 68 then return r:chance(50) end
  local fresh = depth < MAXDEPTH and self.budget > 0
  if k <= 88 then
    if #self.ancestors > 0 and r:chance(30) then
      local ancestor = r:pick(self.ancestors)
      if rawget(ancestor, IDKEY) ~= nil then return ancestor end              -- a cycle
    end
    if #self.keyables > 0 and (r:chance(50) or not fresh) then return r:pick(self.keyables) end
    if not fresh then return str(r) end
    return self:table(depth + 1, true)
  end
  if self.functions and k <= 96 and fresh then
    self.budget = self.budget - 1
    local f = keyfn(self:id(), self:value(depth + 1))
    self.keyables[#self.keyables + 1] = f
    self.funcs[#self.funcs + 1] = f
    return f
  end
  if self.functions then return r:pick(BOUND_LIST) end
  return str(r)
end

function Gen:table(depth, keyable)
  local r = self.r
  self.budget = self.budget - 1
  local n = r:chance(10) and r:int(40) or r:int(6) - 1
  local shape = r:int(4)
  local t
  if shape == 1 then                     -- a constructor: an array part, holes included
    local slots = {}
    for i = 1, n do
      if r:chance(85) then slots[i] = true end
    end
    t = {table.unpack(slots, 1, n)}
  else
    t = {}
  end
  local id
  if keyable or r:chance(40) then
    id = self:id()
    rawset(t, IDKEY, id)
    self.keyables[#self.keyables + 1] = t
  end
  self.tables[#self.tables + 1] = t
  self.ancestors[#self.ancestors + 1] = t
  if shape == 1 then
    for i = 1, n do
      if t[i] then rawset(t, i, self:value(depth + 1)) end
    end
  elseif shape == 2 then                 -- in order, through the hash part
    for i = 1, n do rawset(t, i, self:value(depth + 1)) end
  elseif shape == 3 then                 -- backwards, sparse
    for i = n, 1, -1 do
      if r:chance(70) then rawset(t, i * r:int(3), self:value(depth + 1)) end
    end
  end
  local m = r:chance(10) and r:int(20) or r:int(5) - 1
  for _ = 1, m do
    local k = self:key(depth)
    rawset(t, k, self:value(depth + 1))
  end
  if id then rawset(t, IDKEY, id) end      -- again, in case a random key overwrote it
  if r:chance(20) then
    local k, mt = r:int(10), nil
    if k <= 4 and #self.metas > 0 then mt = r:pick(self.metas)            -- shared
    elseif k <= 6 or depth >= MAXDEPTH then mt = r:pick(self.tables)      -- any, itself too
    else
      mt = self:table(depth + 1)
      self.metas[#self.metas + 1] = mt
      if r:chance(50) then rawset(mt, "__index", r:pick(self.tables)) end
    end
    setmetatable(t, mt)
  end
  self.ancestors[#self.ancestors] = nil
  return t
end

function Gen:func(depth)
  local r = self.r
  self.budget = self.budget - 1
  local k, f = r:int(100), nil
  if k <= 25 then
    f = reader(self:value(depth + 1), self:value(depth + 1))
  elseif k <= 50 then
    local get, set = cell(self:value(depth + 1), self:value(depth + 1), self:value(depth + 1))
    self.cells[#self.cells + 1] = {get = get, set = set}
    if r:chance(50) then get, set = set, get end
    self.pending[#self.pending + 1] = set      -- placed later, or never
    self.funcs[#self.funcs + 1] = set
    f = get
  elseif k <= 60 then
    local f1, f2, f3 = chain(self:value(depth + 1), self:value(depth + 1))
    self.cells[#self.cells + 1] = {get = f1, set = f2, op = "setx"}
    self.cells[#self.cells + 1] = {get = f3, set = f2, op = "sety"}
    local order = r:int(3)
    f = order == 1 and f1 or order == 2 and f2 or f3
    for _, other in ipairs{f1, f2, f3} do
      if other ~= f then
        self.pending[#self.pending + 1] = other
        self.funcs[#self.funcs + 1] = other
      end
    end
  elseif k <= 70 then
    f = recursive(self:value(depth + 1))
  elseif k <= 78 then
    f = maker(self:value(depth + 1))
  elseif k <= 95 then
    f = withenv(self:value(depth + 1))
  else
    local values = {}
    for i = 1, WIDE do
      values[i] = r:chance(90) and integer(r) or self:value(depth + 1)
    end
    f = wide(table.unpack(values, 1, WIDE))
  end
  self.funcs[#self.funcs + 1] = f
  return f
end

function Gen:value(depth)
  local r = self.r
  local k = r:int(100)
  if depth >= MAXDEPTH or self.budget <= 0 then k = r:int(60) end
  if k <= 3 then return nil end
  if k <= 7 then return r:chance(50) end
  if k <= 19 then return integer(r) end
  if k <= 29 then return float(r) end
  if k <= 45 then return str(r) end
  if k <= 52 and #self.tables > 0 then return r:pick(self.tables) end               -- shared
  if k <= 57 and #self.ancestors > 0 then return r:pick(self.ancestors) end         -- a cycle
  if k <= 60 and self.functions and #self.funcs > 0 then return r:pick(self.funcs) end
  if k <= 60 then return str(r) end
  if k <= 85 or not self.functions then return self:table(depth) end
  if k <= 97 then
    if #self.pending > 0 and r:chance(70) then return table.remove(self.pending) end
    return self:func(depth)
  end
  return r:pick(BOUND_LIST)
end

-- the graph: a list of values and their count
function Gen:graph()
  local r = self.r
  local n = r:chance(2) and 50 + r:int(250) or r:int(5) - 1
  local values = {}
  for i = 1, n do values[i] = self:value(0) end
  -- closures of cells not placed yet go somewhere, most of them
  for _, f in ipairs(self.pending) do
    if #self.tables > 0 and r:chance(70) then rawset(r:pick(self.tables), self:key(MAXDEPTH), f) end
  end
  return values, n
end


--[[ The comparison: walk the original and the copy in parallel, with a
     correspondence from each original table or function to its copy. ]]

local REF = {table = true, ["function"] = true}

local function render(node)
  local parts = {}
  while node do
    table.insert(parts, 1, node.label)
    node = node.parent
  end
  return table.concat(parts, " > ")
end

local function show(v)
  if type(v) == "string" then
    local q = string.format("%q", #v > 24 and v:sub(1, 24) .. "..." or v)
    return (q:gsub("\\\n", "\\n"):gsub("[\128-\255]", function(c) return "\\" .. c:byte() end))
  elseif math.type(v) == "float" then
    return string.format("%s %s (bits %016x)", math.type(v), tostring(v),
      string.unpack("<i8", string.pack("<d", v)))
  elseif math.type(v) == "integer" then
    return "integer " .. v
  end
  return tostring(v)
end

local function child(node, label) return {parent = node, label = label} end

local function keylabel(k)
  if REF[type(k)] then return "[" .. tostring(k) .. "]" end
  return "[" .. (type(k) == "number" and (math.type(k) .. " " .. tostring(k)) or show(k)) .. "]"
end

local function differ(node, fmt, ...) return render(node) .. ": " .. string.format(fmt, ...) end

-- the id that a table or function used as a key carries
local function key_id(k)
  if type(k) == "table" then return rawget(k, IDKEY) end
  local ok, tag, id = pcall(k, "probe")
  if ok and tag == "keyfn" then return id end
end

local function same_bits(a, b)
  return rawequal(a, b) or (a ~= a and b ~= b and string.pack("<d", a) == string.pack("<d", b))
end

--[[ Compare the n values of 'originals' with those of 'copies'.  Returns nil, or a
     message naming where they differ.  'stats' counts what was met;
     'map' (original -> copy) is filled. ]]
local function compare(originals, copies, n, stats, map)
  local rev = {}                    -- copy -> original
  local stack = {}
  for i = n, 1, -1 do stack[#stack + 1] = {originals[i], copies[i], {label = "value #" .. i}} end
  while #stack > 0 do
    local item = table.remove(stack)
    local o, c, node = item[1], item[2], item[3]
    local to, tc = type(o), type(c)
    if to ~= tc then
      return differ(node, "%s became %s", show(o), show(c))
    elseif to == "number" then
      if math.type(o) ~= math.type(c)
         or math.type(o) == "integer" and o ~= c
         or math.type(o) == "float" and string.pack("<d", o) ~= string.pack("<d", c) then
        return differ(node, "%s became %s", show(o), show(c))
      end
      if o ~= o then stats.nan = stats.nan + 1 end
    elseif not REF[to] then
      if o ~= c then return differ(node, "%s became %s", show(o), show(c)) end
    elseif BOUND[o] then
      if not rawequal(o, c) then return differ(node, "%s, bound by name, became %s", show(o), show(c)) end
      if to == "function" then stats.cfunctions = stats.cfunctions + 1 else stats.bound = stats.bound + 1 end
    elseif rawequal(o, c) then
      return differ(node, "the copy is the original %s", show(o))
    elseif map[o] ~= nil then
      if not rawequal(map[o], c) then
        return differ(node, "one %s became two copies, %s and %s", to, show(map[o]), show(c))
      end
      stats.shared = stats.shared + 1
    elseif rev[c] ~= nil then
      return differ(node, "two %ss became one copy %s", to, show(c))
    else
      map[o], rev[c] = c, o
      local push = function(a, b, label) stack[#stack + 1] = {a, b, child(node, label)} end
      if to == "table" then
        stats.tables = stats.tables + 1
        local mo, mc = debug.getmetatable(o), debug.getmetatable(c)
        if mo ~= nil then stats.metatables = stats.metatables + 1 end
        push(mo, mc, "metatable")
        local no, nc, byid = 0, 0, nil
        for _ in next, c do nc = nc + 1 end
        for k, v in next, o do
          no = no + 1
          local kc = k
          if REF[type(k)] then
            stats.refkeys = stats.refkeys + 1
            if not BOUND[k] then kc = map[k] end
            if kc == nil then
              local id = key_id(k)
              if id == nil then return differ(node, "(generator) key %s has no id", show(k)) end
              if byid == nil then
                byid = {}
                for ck in next, c do
                  if REF[type(ck)] and not BOUND[ck] then
                    local cid = key_id(ck)
                    if cid ~= nil then byid[cid] = ck end
                  end
                end
              end
              kc = byid[id]
              if kc == nil then return differ(node, "key %s (id %s) has no copy", show(k), id) end
            end
            push(k, kc, "key " .. tostring(k))
          end
          local cv = rawget(c, kc)
          if cv == nil then return differ(child(node, keylabel(k)), "missing from the copy") end
          push(v, cv, keylabel(k))
        end
        if no ~= nc then return differ(node, "a table of %d keys became one of %d", no, nc) end
      else
        stats.functions = stats.functions + 1
        local ro, rc = table.pack(pcall(o, "probe")), table.pack(pcall(c, "probe"))
        if not rc[1] then return differ(node, "the copy raised %s", show(rc[2])) end
        if ro.n ~= rc.n then return differ(node, "%d results became %d", ro.n - 1, rc.n - 1) end
        for i = ro.n, 2, -1 do push(ro[i], rc[i], "upvalue probe #" .. (i - 1)) end
      end
    end
  end
end

--[[ Closures that shared an upvalue share the copy of it, and only it:
     set each cell through its copied setter to a new marker, then every
     copied getter sees its own marker and every original is unchanged. ]]
local function check_cells(cells, map, stats)
  local markers, before = {}, {}
  for i, p in ipairs(cells) do
    if map[p.get] and map[p.set] then
      before[i] = p.get("probe")
      markers[i] = {}
      map[p.set](p.op or "set", markers[i])
      stats.cells = stats.cells + 1
    end
  end
  for i, m in pairs(markers) do
    local p = cells[i]
    local got = map[p.get]("probe")
    if not rawequal(got, m) then
      return string.format("cell #%d: after set on the copy, get on the copy gives %s, not the value set",
        i, show(got))
    end
    if not same_bits(p.get("probe"), before[i]) then
      return string.format("cell #%d: set on the copy changed the original", i)
    end
  end
end

local function newstats()
  return {tables = 0, functions = 0, cfunctions = 0, bound = 0, shared = 0, metatables = 0,
          refkeys = 0, cells = 0, nan = 0}
end

-- 'check(seed)' for cases 1..count (or the one case asked for); a
-- failure names the case and how to rerun it
local function cases(stream, count, check)
  local first, last = 1, math.max(1, math.floor(count * SCALE))
  if ONLY then first, last = ONLY, ONLY end
  for i = first, last do
    local seed = splitmix(splitmix(SEED + stream) + i)
    local ok, problem = pcall(check, seed)
    if not ok or problem then
      error(string.format("seed %d, stream %d, case %d failed: %s\n(rerun it alone: "
        .. "ISOLATE_PROPERTY_SEED=%d ISOLATE_PROPERTY_CASE=%d make test)",
        SEED, stream, i, tostring(problem), SEED, i), 0)
    end
  end
end

-- the graph's values copied through the codec, or an error
local function codec_roundtrip(values, n, opts)
  local s = isolate.encode(table.unpack(values, 1, n))
  local copy = table.pack(isolate.decode(s, opts))
  return copy, s
end


describe("a random value graph", function()
  describe("through isolate.encode and isolate.decode", function()
    it("comes back isomorphic with {trusted = true}: functions, shared upvalues, cycles and all", function()
      local stats = newstats()
      cases(1, 3000, function(seed)
        local g = generator(seed, true)
        local values, n = g:graph()
        local copy = codec_roundtrip(values, n, TRUSTED)
        if copy.n ~= n then return string.format("%d values became %d", n, copy.n) end
        local map = {}
        return compare(values, copy, n, stats, map) or check_cells(g.cells, map, stats)
      end)
      if FULL then           -- the generator made what this spec claims to cover
        assert.is_true(stats.tables > 5000, "tables: " .. stats.tables)
        assert.is_true(stats.functions > 3000, "functions: " .. stats.functions)
        assert.is_true(stats.cells > 400, "cells: " .. stats.cells)
        assert.is_true(stats.shared > 10000, "shared references: " .. stats.shared)
        assert.is_true(stats.refkeys > 3000, "table and function keys: " .. stats.refkeys)
        assert.is_true(stats.metatables > 1000, "metatables: " .. stats.metatables)
        assert.is_true(stats.nan > 150, "NaNs: " .. stats.nan)
        assert.is_true(stats.bound > 250, "modules and globals tables: " .. stats.bound)
        assert.is_true(stats.cfunctions > 250, "C functions: " .. stats.cfunctions)
      end
    end)

    it("without functions comes back isomorphic from an untrusted decode", function()
      local stats = newstats()
      cases(2, 1500, function(seed)
        local values, n = generator(seed, false):graph()
        local copy = codec_roundtrip(values, n)
        if copy.n ~= n then return string.format("%d values became %d", n, copy.n) end
        return compare(values, copy, n, stats, {})
      end)
      assert.equal(0, stats.functions + stats.cfunctions + stats.bound)
    end)

    it("is refused by an untrusted decode when it holds a function, a module or the globals table", function()
      local refused, accepted = 0, 0
      cases(3, 500, function(seed)
        local values, n = generator(seed, true):graph()
        local s = isolate.encode(table.unpack(values, 1, n))
        local stats = newstats()
        local problem = compare(values, table.pack(isolate.decode(s, TRUSTED)), n, stats, {})
        if problem then return problem end
        local ok, err = pcall(isolate.decode, s)
        if stats.functions + stats.cfunctions + stats.bound > 0 then
          if ok then
            return string.format("an untrusted decode accepted %d Lua functions, %d C functions and %d modules "
              .. "or globals tables", stats.functions, stats.cfunctions, stats.bound)
          end
          if not tostring(err):match("^isolate: cannot decode: .* refused") then
            return "refused with an unexpected message: " .. tostring(err)
          end
          refused = refused + 1
        else
          if not ok then return "an untrusted decode refused data: " .. tostring(err) end
          accepted = accepted + 1
        end
      end)
      if FULL then
        assert.is_true(refused > 100, "refused: " .. refused)
        assert.is_true(accepted > 20, "accepted: " .. accepted)
      end
    end)
  end)

  describe("through isolate.run", function()
    it("comes back isomorphic as the arguments an isolate returns", function()
      local stats = newstats()
      cases(4, 500, function(seed)
        local g = generator(seed, true)
        local values, n = g:graph()
        local copy = table.pack(isolate.run(function(...) return ... end, table.unpack(values, 1, n)))
        if copy.n ~= n then return string.format("%d values became %d", n, copy.n) end
        local map = {}
        return compare(values, copy, n, stats, map) or check_cells(g.cells, map, stats)
      end)
      if FULL then
        assert.is_true(stats.cells > 30, "cells: " .. stats.cells)
        assert.is_true(stats.refkeys > 200, "table and function keys: " .. stats.refkeys)
      end
    end)
  end)

  describe("compared by this spec", function()
    local function check(o, c, cells)
      local map = {}
      local stats = newstats()
      return compare({o}, {c}, 1, stats, map) or check_cells(cells or {}, map, stats)
    end

    it("differs when a value, a type or a float's bits differ", function()
      assert.matches("value #1 > %[integer 1%]: integer 1 became float 1.0", check({1}, {1.0}))
      assert.matches("float %-0.0 .- became float 0.0", check({-0.0}, {0.0}))
      assert.matches("became float", check({0 / 0}, {-(0 / 0)}))
      assert.is_nil(check({0 / 0, -0.0, 2.0 ^ -1074}, {0 / 0, -0.0, 2.0 ^ -1074}))
      assert.matches("%[\"x\"%]: \"a\\0\" became \"a\"", check({x = "a\0"}, {x = "a"}))
      assert.matches("missing from the copy", check({x = 1}, {y = 1}))
      assert.matches("a table of 1 keys became one of 2", check({x = 1}, {x = 1, y = 2}))
      assert.matches("metatable: table: .- became nil", check(setmetatable({}, {}), {}))
    end)

    it("differs when identity is lost, merged or not copied", function()
      local s = {}
      assert.matches("one table became two copies", check({s, s}, {{}, {}}))
      local x = {}
      assert.matches("two tables became one copy", check({{}, {}}, {x, x}))
      local cyclic = {}
      cyclic[1] = cyclic
      assert.matches("one table became two copies", check(cyclic, {{{}}}))
      assert.matches("the copy is the original", check({s}, {s}))
      local k1, k2 = {[IDKEY] = 1}, {[IDKEY] = 2}
      assert.is_nil(check({[k1] = 1, [k2] = 2}, {[{[IDKEY] = 2}] = 2, [{[IDKEY] = 1}] = 1}))
      assert.matches("%]: integer 1 became integer 2", check({[k1] = 1}, {[{[IDKEY] = 1}] = 2}))
    end)

    it("differs when a function's upvalues or their sharing differ", function()
      assert.matches("upvalue probe #1: integer 1 became integer 2", check(reader(1), reader(2)))
      local get, set = cell(1)
      local cget = cell(1)
      local _, cset = cell(1)       -- copies that do not share
      assert.matches("cell #1: after set on the copy, get on the copy gives integer 1",
        check({get, set}, {cget, cset}, {{get = get, set = set}}))
      local shared_get, shared_set = cell(1)
      assert.is_nil(check({get, set}, {shared_get, shared_set}, {{get = get, set = set}}))
      assert.equal(1, get("probe"))
    end)
  end)
end)
