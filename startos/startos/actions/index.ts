import { sdk } from '../sdk'
import { configure } from './configure'
import { credentials } from './credentials'
import { showSshPublicKey } from './sshPublicKey'

export const actions = sdk.Actions.of()
  .addAction(configure)
  .addAction(showSshPublicKey)
  .addAction(credentials)
