// Browser entry: RudderStack's analytics-js v3 exactly as published, in its "bundled" build (the plugins,
// XhrQueue and BeaconQueue among them, are in the bundle rather than fetched from RudderStack's CDN), for
// esbuild (build.mjs) to bundle into dist/rudder.js. The test page calls RudderAnalytics#load.
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled'

window.RudderAnalytics = RudderAnalytics
