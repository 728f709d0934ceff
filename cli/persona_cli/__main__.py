from persona_cli.main import main

main()
