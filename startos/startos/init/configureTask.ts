import { configure } from '../actions/configure'
import { storeJson } from '../fileModels/store.json'
import { sdk } from '../sdk'

/** Arbiter cannot start without its GPU hosts: ask for them right after install. */
export const configureTask = sdk.setupOnInit(async (effects, kind) => {
  if (kind !== 'install') return
  if (await storeJson.read((store) => store.configure).once()) return
  await sdk.action.createOwnTask(effects, configure, 'critical', {
    reason: 'Add the GPU hosts Arbiter manages.',
  })
})
