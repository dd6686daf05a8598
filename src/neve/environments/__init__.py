"""neve.environments"""
