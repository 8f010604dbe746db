// Drives one official Node analytics client, unmodified, against a collector: the calls of a customer who
// is anonymous first and then identifies, every call kind the client has.
// Usage: node -r ./clock-shift.js node-client.mjs '<JSON plan>'
//   plan: {client: "segment"|"rudderstack", host, writeKey, anonymousId, userId, crmId, groupId, url}
//   (write key: these are server libraries, holding a secret key)
// Prints one JSON line: {client, clock (this process's, shifted, ISO), calls: [[kind, error|null]...], errors}
import { Analytics as SegmentAnalytics } from '@segment/analytics-node'
import RudderNode from '@rudderstack/rudder-sdk-node'

const plan = JSON.parse(process.argv[2])
const { anonymousId: A, userId: U, crmId: C, groupId: G } = plan
const errors = []
const calls = []

// The customer's calls, client-neutral: [kind, message]. The anonymous visitor first, then the login.
const script = [
  ['page', { anonymousId: A, name: 'Pricing', properties: { url: plan.url, path: '/pricing', title: 'Pricing' } }],
  ['screen', { anonymousId: A, name: 'Home' }],
  ['track', { anonymousId: A, event: 'Email Clicked', properties: { channel: 'email', campaign: 'spring' } }],
  ['group', { anonymousId: A, groupId: G, traits: { name: 'Acme' } }],
  ['identify', { userId: U, anonymousId: A, traits: { plan: 'pro' } }],
  ['track', { userId: U, event: 'Order Completed', properties: { total: 42 } }],
  // The same person under the CRM's id, an event the till recorded ten minutes before it was sent (each
  // client's own field for the time an event happened: Segment `timestamp`, RudderStack `originalTimestamp`).
  ['track', { userId: C, event: 'Store Purchase', properties: { channel: 'store' },
              [plan.client === 'rudderstack' ? 'originalTimestamp' : 'timestamp']: new Date(Date.now() - 10 * 60 * 1000) }],
  ['alias', { userId: U, previousId: C }],
]

// Resolves when `promise` does or after `ms`, whichever is first, leaving no timer behind (a pending timer
// would keep this process alive).
async function within(promise, ms) {
  let timer
  const expiry = new Promise((resolve) => { timer = setTimeout(resolve, ms) })
  try {
    await Promise.race([promise, expiry])
  } finally {
    clearTimeout(timer)
  }
}

function settle(kind, invoke) {
  return new Promise((resolve) => {
    try {
      invoke((err) => {
        calls.push([kind, err ? String(err && (err.message || err)) : null])
        resolve()
      })
    } catch (err) {
      calls.push([kind, `threw: ${err && err.message}`])
      resolve()
    }
  })
}

async function runSegment() {
  const analytics = new SegmentAnalytics({ writeKey: plan.writeKey, host: plan.host, path: '/v1/batch', flushAt: 4, flushInterval: 100, maxRetries: 2 })
  analytics.on('error', (err) => errors.push(`error event: ${err && (err.reason?.message || err.message || err.code)}`))
  const done = script.map(([kind, message]) => settle(kind, (cb) => analytics[kind](message, cb)))
  await analytics.closeAndFlush({ timeout: 15000 })
  await within(Promise.all(done), 5000)
}

async function runRudder() {
  const client = new RudderNode(plan.writeKey, {
    dataPlaneUrl: plan.host,
    flushAt: 4,
    flushInterval: 100,
    retryCount: 1,
    logLevel: 'error',
    errorHandler: (err) => errors.push(`errorHandler: ${err && (err.response ? `${err.response.status} ${JSON.stringify(err.response.data)}` : err.message)}`),
  })
  const done = script.map(([kind, message]) => settle(kind, (cb) => client[kind](message, cb)))
  await client.flush()
  await within(Promise.all(done), 15000)
}

const run = { segment: runSegment, rudderstack: runRudder }[plan.client]
if (!run) throw new Error(`unknown client ${plan.client}`)
await run()
console.log(JSON.stringify({ client: plan.client, clock: new Date().toISOString(), calls, errors }))
