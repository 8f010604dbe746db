// Shifts this JavaScript realm's clock by a fixed offset, leaving the code that reads it untouched: every
// `new Date()` and `Date.now()` (and `Date()` called as a function) is the real time plus the offset.
// Node:    node -r ./clock-shift.js ...   with PEER_CLOCK_OFFSET_MS in the environment
// Browser: an init script that sets globalThis.__PEER_CLOCK_OFFSET_MS and then runs this file's text
;(function () {
  var offset = Number(
    typeof globalThis.__PEER_CLOCK_OFFSET_MS !== 'undefined'
      ? globalThis.__PEER_CLOCK_OFFSET_MS
      : typeof process !== 'undefined' && process.env
        ? process.env.PEER_CLOCK_OFFSET_MS || 0
        : 0
  )
  if (!Number.isFinite(offset)) throw new Error('PEER_CLOCK_OFFSET_MS is not a number: ' + offset)
  var RealDate = Date
  if (RealDate.__peerRealDate) return // already shifted in this realm
  function ShiftedDate() {
    var args = Array.prototype.slice.call(arguments)
    if (!new.target) return new RealDate(RealDate.now() + offset).toString()
    if (args.length === 0) return new RealDate(RealDate.now() + offset)
    return new (Function.prototype.bind.apply(RealDate, [null].concat(args)))()
  }
  ShiftedDate.prototype = RealDate.prototype
  ShiftedDate.now = function now() {
    return RealDate.now() + offset
  }
  ShiftedDate.parse = RealDate.parse
  ShiftedDate.UTC = RealDate.UTC
  ShiftedDate.__peerRealDate = RealDate
  ShiftedDate.__peerOffsetMs = offset
  globalThis.Date = ShiftedDate
})()
