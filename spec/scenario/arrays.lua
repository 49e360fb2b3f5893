-- Encodes arrays of every kind of value that the codec reads in place
-- (spec/inplace_spec.lua), and prints whether it did, then each message
-- in hex: run with and without ISOLATE_API_ONLY, the bytes must match.
local isolate = require "isolate"
local arrays = dofile("spec/scenario/arraycases.lua")
print(tostring(require("isolate.core")._inplace))
for _, case in ipairs(arrays.cases()) do
  print(case.name, (isolate.encode(case.value):gsub(".", function(c)
    return string.format("%02x", c:byte())
  end)))
end
