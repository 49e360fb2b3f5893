-- The main job, for real: several JSON files, read and decoded with dkjson,
-- first one after another in this state, then each in its own isolate, in
-- parallel.  The decoded data comes back to this state either way; the two
-- answers are checked equal and the times printed.
--
--   make demo              (or: lua5.4 examples/demo.lua [files] [records])

local isolate = require "isolate"
local json = require "dkjson"

local FILES = tonumber(arg[1]) or 2 * isolate.cpus()
local RECORDS = tonumber(arg[2]) or 6000

local clock = os.clock
do
  local ok, socket = pcall(require, "socket")
  if ok then clock = socket.gettime end   -- wall clock; os.clock is CPU time
end
if clock == os.clock then
  print("(lua-socket not installed: times are CPU time, which hides the parallel gain)")
end

-- Make the input: FILES files of RECORDS records each.
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local paths = {}
for f = 1, FILES do
  local records = {}
  for i = 1, RECORDS do
    records[i] = {
      id = f * 1000000 + i,
      name = "item " .. i .. " of file " .. f,
      price = (i * 37 % 1000) / 10,
      tags = {"red", "green", i % 2 == 0 and "even" or "odd"},
      stock = {warehouse = i % 7, shelf = i % 13, available = i % 3 ~= 0},
    }
  end
  paths[f] = string.format("%s/data%02d.json", dir, f)
  local out = assert(io.open(paths[f], "w"))
  out:write(json.encode(records))
  out:close()
end

-- What each file is read for: its records, decoded.
local function load(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  return json.decode(text)
end

local function summary(files)
  local n, total = 0, 0
  for _, records in ipairs(files) do
    for _, r in ipairs(records) do
      n = n + 1
      if r.stock.available then total = total + r.price end
    end
  end
  return n, total
end

local t0 = clock()
local serial = {}
for f, path in ipairs(paths) do serial[f] = load(path) end
local t1 = clock()
local tasks = {}
for f, path in ipairs(paths) do tasks[f] = isolate.spawn(load, path) end
local parallel = {}
for f, task in ipairs(tasks) do parallel[f] = task:await() end
local t2 = clock()

for _, path in ipairs(paths) do os.remove(path) end
os.remove(dir)

local n1, total1 = summary(serial)
local n2, total2 = summary(parallel)
assert(n1 == n2 and math.abs(total1 - total2) < 1e-6, "the parallel answer differs")

local bytes = 0
for _, records in ipairs(serial) do bytes = bytes + #json.encode(records) end
print(string.format("%d JSON files, %d records, %.1f MB, decoded with dkjson", FILES, n1, bytes / 1e6))
print(string.format("  serial, one state:           %6.3f s", t1 - t0))
print(string.format("  parallel, %d isolates:       %6.3f s   (%.2fx faster on %d CPUs)",
  FILES, t2 - t1, (t1 - t0) / (t2 - t1), isolate.cpus()))
print(string.format("  same answer both ways: %d records, %.1f in stock", n2, total2))
