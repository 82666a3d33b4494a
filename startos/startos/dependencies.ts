import { sdk } from './sdk'

// Arbiter needs no other StartOS service: its GPU hosts are reached over SSH.
export const setDependencies = sdk.setupDependencies(async () => ({}))
