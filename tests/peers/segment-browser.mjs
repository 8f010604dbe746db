// Browser entry: Segment's analytics-next exactly as published, for esbuild (build.mjs) to bundle into
// dist/segment.js. It adds nothing: the test page calls AnalyticsBrowser.load with the collector's address.
import { AnalyticsBrowser } from '@segment/analytics-next'

window.AnalyticsBrowser = AnalyticsBrowser
